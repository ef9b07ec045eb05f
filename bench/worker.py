"""The bench's agent: one process running the Python SDK's `Worker`, as a user's agent would.

Each task's message says what to do: `hold` waits until the server cancels the task; anything
else completes at once. With `--record FILE` the worker notes when each task reached its handler
and when each cancel reached it (CLOCK_MONOTONIC ns, comparable with the harness's clock) and
writes them as JSON when it stops (SIGTERM). It prints `worker ready` once connected.

    BENCH_WORKER_KEY=... python -m bench.worker --server HOST:PORT --agent ID --capacity 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

from agenttasks.worker import TaskContext, Worker
from bench.loadgen import now_ns

HOLD = "hold"


class Recorder:
    """Handler times per task id; kept in memory and written once at the end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.assigned: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}

    async def handle(self, ctx: TaskContext) -> str:
        if self.enabled:
            self.assigned[ctx.task_id] = now_ns()
        if ctx.message != HOLD:
            return "done"
        try:
            await asyncio.Event().wait()  # until the server cancels the task
        except asyncio.CancelledError:
            if self.enabled and ctx.cancelled.is_set():  # told by the server, not our own shutdown
                self.cancelled[ctx.task_id] = now_ns()
            raise
        return "not reached"


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
        record = {"assigned": recorder.assigned, "cancelled": recorder.cancelled}
        args.record.write_text(json.dumps(record))


if __name__ == "__main__":
    asyncio.run(main())
