"""One task streams 1 MiB of output in 32-byte chunks, as fast as its handler can write them.

The SDK worker process (`bench.worker`, capacity 1) gets one task whose handler awaits
`ctx.output(chunk)` for chunk i = `numbered(i)`, i = 0..32,767, then `ctx.flush()` when the SDK
has it, and completes. One WatchTask stream over gRPC, opened while the handler waits for the
client's go (a SendMessage), reads the output; the workload fails unless the watcher got exactly
every byte written, in order. The handler stops at the plan's time limit however far it got.

- written chunks/s: chunks over the time from the first write to the end of the flush;
- delivered chunks/s: chunks over the time from the first write until the watcher had the last;
- the last 1,000 chunks against the first 1,000: time per chunk of chunks 1..1,000 (from the
  first write) and of the last 1,000, delivered to the watcher (the target) and as written.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
from collections.abc import Mapping
from typing import Any

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.streaming import CHUNK_BYTES, Whole
from bench.target import Api, Server, Worker
from bench.worker import NUMBERED, stream_message
from bench.workloads.common import Usage, window

GRACE_SECONDS = 60.0
"""Beyond the writer's own limit: to start, flush, and complete."""


async def _watch(api: Api, agent_id: str, task_id: str, whole: Whole, subscribed: Any) -> str:
    """Read the task's WatchTask stream into `whole` until its end; the end's reason."""
    call = api.tasks.WatchTask(pb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)
    async for message in aiter(call):
        at = loadgen.now_ns()
        if message.type == "snapshot":
            if message.task.output:
                whole.add(message.task.output, at)
            subscribed()
        elif message.type == "output":
            whole.add(message.output, at)
        elif message.type == "end":
            return str(message.reason)
    return "the stream ended without an end event"


def per_chunk_us(times: list[int], started: int, window: int) -> tuple[float, float, int]:
    """(µs per chunk of the first `window` chunks from `started`, of the last `window`, window used).

    `times` are when each chunk completed, in order. Chunks that completed at one moment (one
    event carrying many) are timed together: each window grows to the whole events it touches,
    so a window inside one event is not timed as free.
    """
    n = len(times)
    window = min(window, n // 2)
    if window == 0:
        return math.nan, math.nan, 0
    first_end = times[window - 1]
    first = (first_end - started) / bisect.bisect_right(times, first_end)
    begin = bisect.bisect_left(times, times[n - window])
    before = times[begin - 1] if begin > 0 else started
    last = (times[n - 1] - before) / (n - begin)
    return round(first / 1e3, 1), round(last / 1e3, 1), window


async def stream_one(ctx: Context) -> list[Outcome]:
    plan = ctx.plan
    workdir = ctx.scratch("stream-one")
    record = workdir / "worker-record.json"
    chunks, limit = plan.stream_chunks, plan.stream_one_seconds
    whole = Whole()
    async with Server(workdir) as server:
        api = server.api()
        async with Worker(server, capacity=1, record=record) as worker:
            message = stream_message(NUMBERED, chunks, 0, limit)
            answer = await api.tasks.Submit(
                pb.SubmitRequest(agent_id=server.agent_id, message=message), metadata=api.metadata, timeout=30
            )
            listening = asyncio.Event()
            watcher = asyncio.create_task(
                _watch(api, server.agent_id, answer.task_id, whole, listening.set), name="stream-one-watcher"
            )
            try:
                async with asyncio.timeout(GRACE_SECONDS):
                    await _first_of(listening, watcher)
                pids = {**server.pids(), "worker": worker.pid}
                async with window(ctx, pids, profile="stream_one", seconds=limit) as usage:
                    go = pb.SendMessageRequest(agent_id=server.agent_id, task_id=answer.task_id, message="go")
                    await api.tasks.SendMessage(go, metadata=api.metadata, timeout=30)
                    async with asyncio.timeout(limit + GRACE_SECONDS):
                        end = await watcher
            finally:
                watcher.cancel()
        # The worker has stopped and written what it did.
        wrote: dict[str, Any] = json.loads(record.read_text())["streams"][answer.task_id]
    ctx.discard(workdir)
    what = "as fast as `await ctx.output()` returns, one SDK worker process, one WatchTask stream"
    title = f"One task streaming {chunks * CHUNK_BYTES / 2**20:g} MiB in {CHUNK_BYTES}-byte chunks"
    return [one_outcome(ctx, "stream_one", title, what, whole, wrote, usage, end)]


def one_outcome(
    ctx: Context, name: str, title: str, what: str, whole: Whole, wrote: Mapping[str, Any], usage: Usage, end: str
) -> Outcome:
    """The figures of one stream of numbered chunks, from what its watcher received and its writer
    recorded (`paced_writes`' fields, `times`, and `flushed_ns` when the writer flushed)."""
    plan = ctx.plan
    chunks, limit = plan.stream_chunks, plan.stream_one_seconds
    written, started, times = int(wrote["written"]), int(wrote["started_ns"]), list(wrote["times"])
    delivered = len(whole.arrived_ns)
    first_us, last_us, used = per_chunk_us(whole.arrived_ns, started, plan.stream_window)
    w_first_us, w_last_us, _ = per_chunk_us(times, started, plan.stream_window)
    seconds = (whole.arrived_ns[-1] - started) / 1e9 if delivered else math.nan
    write_seconds = (int(wrote.get("flushed_ns", wrote["ended_ns"])) - started) / 1e9
    load = f"1 task, {chunks:,} chunks of {CHUNK_BYTES} bytes ({chunks * CHUNK_BYTES / 2**20:g} MiB) {what}; "
    load += f"limit {limit:g} s"
    if wrote["stopped_by_limit"]:
        load += f": stopped by it at {written:,} chunks"
    outcome = Outcome(
        name,
        title,
        load=load,
        metrics={
            "rate": round(delivered / seconds, 1) if delivered else math.nan,
            "write_rate": round(written / write_seconds, 1),
            "chunks": chunks,
            "written": written,
            "delivered": delivered,
            "events": len(whole.parts),
            "complete": int(written == chunks),
            "seconds": round(seconds, 3),
            "window": used,
            "first_us_per_chunk": first_us,
            "last_us_per_chunk": last_us,
            "last_vs_first": round(last_us / first_us, 3) if used else math.nan,
            "written_first_us_per_chunk": w_first_us,
            "written_last_us_per_chunk": w_last_us,
            "written_last_vs_first": round(w_last_us / w_first_us, 3) if used else math.nan,
            "server_cpu_us_per_chunk": usage.cpu_us_per("server", delivered),
            "worker_cpu_us_per_chunk": usage.cpu_us_per("worker", written),
            **usage.metrics,
        },
        details={**usage.details, "writer_flushed": bool(wrote.get("flush_called"))},
    )
    problem = whole.mismatch(written)
    if end != "TASK_FINISHED":
        problem = problem or f"the watch stream ended with {end!r}"
    if problem or used == 0:
        outcome.status = "failed"
        outcome.reason = problem or f"only {written} chunks written"
    return outcome


async def _first_of(listening: asyncio.Event, watcher: asyncio.Task[str]) -> None:
    """Wait until the watcher listens; raise at once if it ends first."""
    waiter = asyncio.ensure_future(listening.wait())
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not listening.is_set():
        raise RuntimeError(f"the watcher ended before its snapshot: {watcher.result()!r}")
