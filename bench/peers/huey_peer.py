"""huey with SqliteHuey on the end-to-end workload: the harness enqueues N tasks (huey's enqueue
is a synchronous call, so one producer thread) while one consumer process with one worker thread
runs them. Throughput is N over the time from the first enqueue to the last task's finish."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc
from bench.workloads.common import window

POLL_SECONDS = 0.01
TITLE = "huey (SqliteHuey), end to end"


def consumer_command() -> list[str]:
    # One worker thread; poll an empty queue every 10 ms instead of backing off to 10 s, so an
    # idle consumer does not sleep through the start of the run; quiet: no log line per task.
    return [
        *(sys.executable, "-m", "huey.bin.huey_consumer", "bench.peers.huey_app.huey"),
        *("--workers", "1", "--worker-type", "thread", "--delay", "0.01", "--max-delay", "0.01", "--backoff", "1"),
        *("--no-periodic", "--quiet"),
    ]


async def huey_peer(ctx: Context) -> list[Outcome]:
    try:
        from bench.peers.huey_app import make_huey
    except ImportError as error:
        return [Outcome("huey", TITLE, status="skipped", reason=f"huey is not installed ({error}): pip install huey")]
    plan = ctx.plan
    n = plan.tasks
    workdir = ctx.scratch("huey")
    db = workdir / "huey.db"
    huey, task = make_huey(str(db))
    async with Proc("huey-consumer", consumer_command(), workdir, env={"BENCH_HUEY_DB": str(db)}) as consumer:
        # Ready when it has run one task.
        warmup = task.s(-1)
        await asyncio.to_thread(huey.enqueue, warmup)
        await _until(lambda: huey.storage.result_store_size() >= 1, plan.limit_seconds, consumer)
        huey.storage.flush_results()

        def enqueue_all() -> None:
            for i in range(n):
                huey.enqueue(task.s(i))

        async with window(ctx, {"server": consumer.pid}) as usage:
            started = time.time()
            await asyncio.to_thread(enqueue_all)
            enqueued = time.time()
            await _until(lambda: huey.storage.result_store_size() >= n, plan.limit_seconds, consumer)
        finished = [huey.serializer.deserialize(value) for value in huey.storage.result_items().values()]
    huey.storage.close()
    ctx.discard(workdir)
    seconds = max(finished) - started
    return [
        Outcome(
            "huey",
            TITLE,
            load=f"{n} tasks enqueued by one producer thread, one consumer process with one worker thread",
            metrics={
                "rate": round(len(finished) / seconds, 1),
                "tasks": n,
                "completed": len(finished),
                "seconds": round(seconds, 3),
                "enqueue_rate": round(n / (enqueued - started), 1),
                **usage.metrics,
            },
            details=usage.details,
        )
    ]


async def _until(done: Callable[[], bool], limit: float, consumer: Proc) -> None:
    async with asyncio.timeout(limit):
        while not await asyncio.to_thread(done):
            if consumer.returncode is not None:
                raise RuntimeError(f"the huey consumer exited:\n{consumer.log_tail()}")
            await asyncio.sleep(POLL_SECONDS)
