"""The baselines of streamed output: the bare relay (`bench.relay`) under the streaming loads.

- `relay`: the load of `stream_many` (same tasks, chunks, rate, schedule and watchers, one per
  task on one channel), its writers in one process on one client stream.
- `relay_one`: the load of `stream_one` (one task's numbered chunks as fast as the writer can
  queue them, one watcher that checks every byte), the ceiling of one stream.

The relay's process is `server` and its writer's `worker` in the CPU figures, as the SDK worker
is for ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import loadgen, relay
from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc
from bench.streaming import CHUNK_BYTES, Stamped, Whole
from bench.workloads.common import window
from bench.workloads.stream_many import GRACE_SECONDS, chunks_per_task, counter, many_outcome, watched, writer_limit
from bench.workloads.stream_one import one_outcome

RELAY_COMMAND = [sys.executable, "-m", "bench.relay"]


async def _watch(
    channel: grpc.aio.Channel, task: bytes, add: Callable[[str, int], None], listening: Callable[[], None]
) -> str:
    call = channel.unary_stream(relay.WATCH, None, None)(task)  # raw bytes both ways
    first = True
    async for chunk in call:
        if first:  # the relay's "subscribed"
            first = False
            listening()
            continue
        add(chunk.decode(), loadgen.now_ns())
    return "TASK_FINISHED"  # the relay ends a watch after the task's last chunk


def _writer(address: str, workdir: Path, name: str, args: Sequence[str]) -> Proc:
    command = [*RELAY_COMMAND, "write", "--server", address, *args, "--record", str(workdir / f"{name}.json")]
    return Proc(name, command, workdir)


async def _many(ctx: Context, server: Proc, address: str, workdir: Path) -> Outcome:
    plan = ctx.plan
    tasks = relay.task_ids(plan.stream_tasks)
    streams = [Stamped() for _ in tasks]
    listening, listens = counter(len(tasks))
    args = ["--tasks", str(len(tasks)), "--count", str(chunks_per_task(plan))]
    args += ["--rate", f"{plan.stream_rate:g}", "--limit", f"{writer_limit(plan):g}"]
    channel = loadgen.channel(address)
    try:
        watchers = [
            asyncio.create_task(_watch(channel, task, got.add, listens))
            for task, got in zip(tasks, streams, strict=True)
        ]
        async with _writer(address, workdir, "relay-writer", args) as writer:
            await writer.wait_for_line(r"^relay writer ready", GRACE_SECONDS)

            async def go() -> None:
                os.kill(writer.pid, signal.SIGUSR1)

            pids = {"server": server.pid, "worker": writer.pid}
            ends, usage = await watched(ctx, "relay", pids, watchers, listening, go)
            await writer.wait_for_line(r"^relay writer done", GRACE_SECONDS)
    finally:
        await channel.close(grace=None)
    wrote: dict[str, Any] = json.loads((workdir / "relay-writer.json").read_text())["streams"]
    return many_outcome(
        ctx,
        "relay",
        f"Bare grpc.aio relay, {len(tasks)} streams",
        "one writer process on one client stream, one relay stream per task (one channel)",
        streams,
        ends,
        usage,
        wrote,
    )


async def _one(ctx: Context, server: Proc, address: str, workdir: Path) -> Outcome:
    plan = ctx.plan
    task = relay.task_ids(1)[0]
    whole = Whole()
    listening = asyncio.Event()
    args = ["--tasks", "1", "--count", str(plan.stream_chunks), "--rate", "0"]
    args += ["--limit", f"{plan.stream_one_seconds:g}", "--kind", "numbered"]
    channel = loadgen.channel(address)
    try:
        watcher = asyncio.create_task(_watch(channel, task, whole.add, listening.set))
        async with _writer(address, workdir, "relay-one-writer", args) as writer:
            await writer.wait_for_line(r"^relay writer ready", GRACE_SECONDS)
            async with asyncio.timeout(GRACE_SECONDS):
                await listening.wait()
            pids = {"server": server.pid, "worker": writer.pid}
            async with window(ctx, pids, profile="relay_one", seconds=plan.stream_one_seconds) as usage:
                os.kill(writer.pid, signal.SIGUSR1)
                async with asyncio.timeout(plan.stream_one_seconds + GRACE_SECONDS):
                    end = await watcher
            await writer.wait_for_line(r"^relay writer done", GRACE_SECONDS)
    finally:
        watcher.cancel()
        await channel.close(grace=None)
    wrote: dict[str, Any] = json.loads((workdir / "relay-one-writer.json").read_text())["streams"]
    title = f"Bare grpc.aio relay, one stream of {plan.stream_chunks * CHUNK_BYTES / 2**20:g} MiB"
    what = "queued as fast as the writer can, sent 64 to a message, one relay stream to one watcher"
    return one_outcome(ctx, "relay_one", title, what, whole, wrote[task.decode()], usage, end)


async def bare_relay(ctx: Context) -> list[Outcome]:
    workdir = ctx.scratch("relay")
    async with Proc("relay", [*RELAY_COMMAND, "serve"], workdir) as server:
        address = (await server.wait_for_line(r"listening on (\S+)")).group(1)
        outcomes = [await _many(ctx, server, address, workdir), await _one(ctx, server, address, workdir)]
    ctx.discard(workdir)
    return outcomes
