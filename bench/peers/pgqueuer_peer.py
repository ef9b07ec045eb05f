"""pgqueuer on the end-to-end workload, on the same PostgreSQL as agenttasks (`--db`), in a fresh
database of its own: the harness enqueues N jobs, one `enqueue` call (one INSERT) per job, over
a few connections at once, while one consumer process (`bench.peers.pgqueuer_app`, pgqueuer's
`QueueManager`) runs them. A job is complete when pgqueuer has moved it to its log table with
status `successful`: throughput is N over the time from the first enqueue to the latest such row.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import time
from typing import Any

from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.postgres import BackendCpu
from bench.procs import Proc
from bench.workloads.common import window

TITLE = "pgqueuer on PostgreSQL, end to end"
NEEDED = ("pgqueuer", "psycopg")
CONNECTIONS = 32
"""Enqueue calls in flight, each on a connection of its own (a psycopg connection runs one query
at a time). pgqueuer's best on this machine kind, N=5,000: 1 connection 341 tasks/s, 4: 347,
16: 457, 32: 1,098, 64: 783. Each enqueue is a transaction of its own (an INSERT whose trigger
NOTIFYs the consumer), so one connection waits a whole round trip and commit per job."""
POLL_SECONDS = 0.05
DONE = "SELECT count(*), extract(epoch FROM max(created)) FROM pgqueuer_log WHERE status = 'successful'"


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


async def _completed(connection: Any) -> tuple[int, float]:
    """How many jobs completed, and when the latest was logged (epoch seconds)."""
    count, latest = await (await connection.execute(DONE)).fetchone()
    return int(count), float(latest or 0.0)


async def pgqueuer_peer(ctx: Context) -> list[Outcome]:
    if missing := _missing():
        reason = f"not installed: {', '.join(missing)}: pip install -e '.[bench,postgres]'"
        return [Outcome("pgqueuer", TITLE, status="skipped", reason=reason)]
    if ctx.postgres is None:
        return [Outcome("pgqueuer", TITLE, status="skipped", reason="needs --db postgresql://user@host:port/dbname")]
    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.queries import Queries

    from bench.peers.pgqueuer_app import ENTRYPOINT

    plan = ctx.plan
    n = plan.tasks
    workdir = ctx.scratch("pgqueuer")
    async with ctx.postgres.database("pgqueuer") as url, contextlib.AsyncExitStack() as stack:
        connections = [
            await stack.enter_async_context(await psycopg.AsyncConnection.connect(url, autocommit=True))
            for _ in range(CONNECTIONS)
        ]
        queries = [Queries(PsycopgDriver(connection)) for connection in connections]
        await queries[0].install()
        consumer = await stack.enter_async_context(
            Proc("pgqueuer-consumer", [sys.executable, "-m", "bench.peers.pgqueuer_app", "--dsn", url], workdir)
        )
        await consumer.wait_for_line(r"pgqueuer consumer running")
        # Ready when it has run one job.
        await queries[0].enqueue(ENTRYPOINT, b"-1")
        await _until(connections[0], 1, plan.limit_seconds, consumer)
        await connections[0].execute("TRUNCATE pgqueuer_log")

        async def enqueue(slot: int) -> None:
            await queries[slot].enqueue(ENTRYPOINT, None)

        meter = BackendCpu(ctx.postgres, ctx.postgres.name_for("pgqueuer"))
        async with window(ctx, {"server": consumer.pid}, postgres=meter) as usage:
            started = time.time()
            enqueued = await loadgen.closed_loop(
                enqueue, concurrency=CONNECTIONS, seconds=plan.limit_seconds, max_calls=n
            )
            enqueue_seconds = time.time() - started
            await _until(connections[0], n, plan.limit_seconds, consumer)
        completed, last = await _completed(connections[0])
    ctx.discard(workdir)
    seconds = last - started
    outcome = Outcome(
        "pgqueuer",
        TITLE,
        load=(
            f"{n} jobs, one enqueue call each, {CONNECTIONS} connections in flight; one consumer process "
            "(QueueManager, batch size 10); PostgreSQL"
        ),
        metrics={
            "rate": round(completed / seconds, 1),
            "tasks": n,
            "completed": completed,
            "seconds": round(seconds, 3),
            "enqueue_rate": round(n / enqueue_seconds, 1),
            "enqueue_errors": enqueued.errors,
            **usage.cpu_us_per_task(completed),
            **usage.metrics,
        },
        details={**usage.details, "first_error": enqueued.first_error},
    )
    if completed != n or enqueued.errors:
        outcome.status = "failed"
        outcome.reason = f"{completed} of {n} completed, {enqueued.errors} enqueue errors: {enqueued.first_error}"
    return [outcome]


async def _until(connection: Any, count: int, limit: float, consumer: Proc) -> None:
    async with asyncio.timeout(limit):
        while (await _completed(connection))[0] < count:
            if consumer.returncode is not None:
                raise RuntimeError(f"the pgqueuer consumer exited:\n{consumer.log_tail()}")
            await asyncio.sleep(POLL_SECONDS)
