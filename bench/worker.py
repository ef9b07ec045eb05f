"""The bench's agent: one process running the Python SDK's `Worker`, as a user's agent would.

Each task's message says what to do: `hold` waits until the server cancels the task;
`stream KIND COUNT RATE LIMIT` (see `stream_message`) waits for the client's first message, then
writes COUNT chunks of output with `await ctx.output(chunk)`, RATE per second (0: as fast as it
can) for at most LIMIT seconds, calls `ctx.flush()` if the SDK has it, and completes; anything
else completes at once. With `--record FILE` the worker notes when each task reached its handler,
when each cancel reached it, and what each stream wrote (CLOCK_MONOTONIC ns, comparable with the
harness's clock) and writes them as JSON when it stops (SIGTERM). It prints `worker ready` once
connected.

    BENCH_WORKER_KEY=... python -m bench.worker --server HOST:PORT --agent ID --capacity 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agenttasks.worker import TaskContext, Worker
from bench.loadgen import now_ns
from bench.streaming import numbered, paced_writes, stamped

HOLD = "hold"
STREAM = "stream"
NUMBERED = "numbered"
"""Chunk i is `numbered(i)`, and the time each `output()` returned is recorded."""
STAMPED = "stamped"
"""Chunk i is `stamped(i, now)`, the tasks' first chunks spread over one interval."""


def stream_message(kind: str, count: int, rate: float, limit_seconds: float) -> str:
    """The task message that makes the worker stream `count` chunks of `kind`."""
    return f"{STREAM} {kind} {count} {rate:g} {limit_seconds:g}"


class Recorder:
    """Handler times per task id; kept in memory and written once at the end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.assigned: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.streams: dict[str, dict[str, Any]] = {}

    async def handle(self, ctx: TaskContext) -> str:
        if self.enabled:
            self.assigned[ctx.task_id] = now_ns()
        if ctx.message.startswith(f"{STREAM} "):
            return await self.stream(ctx)
        if ctx.message != HOLD:
            return "done"
        try:
            await asyncio.Event().wait()  # until the server cancels the task
        except asyncio.CancelledError:
            if self.enabled and ctx.cancelled.is_set():  # told by the server, not our own shutdown
                self.cancelled[ctx.task_id] = now_ns()
            raise
        return "not reached"

    async def stream(self, ctx: TaskContext) -> str:
        _, kind, count, rate, limit = ctx.message.split()
        per_second = float(rate)
        await ctx.next_message()  # the client's go: its watcher is listening by now
        times: list[int] | None = [] if self.enabled and kind == NUMBERED else None

        async def write(i: int, now: int) -> None:
            await ctx.output(numbered(i) if kind == NUMBERED else stamped(i, now))

        # Spread the tasks' chunks over one interval rather than all at its start.
        offset = random.uniform(0, 1 / per_second) if per_second > 0 else 0.0  # noqa: S311 - not cryptography
        pace = await paced_writes(int(count), per_second, float(limit), write, offset_seconds=offset, times=times)
        # An SDK whose output() returns once the chunk is queued has flush() to wait until all is stored.
        flush = getattr(ctx, "flush", None)
        if flush is not None:
            await flush()
        if self.enabled:
            self.streams[ctx.task_id] = {
                **asdict(pace),
                "flush_called": flush is not None,
                "flushed_ns": now_ns(),
                "times": times,
            }
        return f"wrote {pace.written} chunks"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    recorder = Recorder(args.record is not None)
    worker = Worker(args.server, os.environ["BENCH_WORKER_KEY"], args.agent, recorder.handle, args.capacity)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)

    async def announce() -> None:
        await worker.wait_connected()
        print("worker ready", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await worker.run()  # until SIGTERM calls worker.stop()
    finally:
        announcer.cancel()
    if args.record is not None:
        record = {"assigned": recorder.assigned, "cancelled": recorder.cancelled, "streams": recorder.streams}
        args.record.write_text(json.dumps(record))


if __name__ == "__main__":
    asyncio.run(main())
