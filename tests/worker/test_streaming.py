"""Output at token rates, through the real SDK and the real service: chunks are queued and sent
together, stored in order and seen by watchers once each; flush() waits for storage; the 1 MiB
cap stops the output exactly where it stopped when every chunk went alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agenttasks.core.dispatch import MAX_OUTPUT_BYTES
from agenttasks.worker import ReportRejected, TaskContext
from agenttasks.worker.output import COALESCE_BYTES
from tests.worker.conftest import StartWorker, Tasks

pytestmark = pytest.mark.asyncio

CHUNKS = 20_000


def token(i: int) -> str:
    return f"t{i:06d} "  # 8 bytes: 20,000 of them are 160 kB, under the task's 1 MiB


async def test_many_small_chunks_are_sent_together_and_arrive_whole_in_order(
    tasks: Tasks, start_worker: StartWorker
) -> None:
    written = "".join(token(i) for i in range(CHUNKS))
    flushed = asyncio.Event()
    release = asyncio.Event()

    async def handle(ctx: TaskContext) -> str:
        for i in range(CHUNKS):
            await ctx.output(token(i))
        await ctx.flush()
        flushed.set()
        await release.wait()
        return "done"

    task_id = await tasks.submit()
    stream = aiter(tasks.watch(task_id))
    assert (await anext(stream)).type == "snapshot"
    await start_worker(handle)

    seen: list[Any] = []
    while "".join(e.output for e in seen if e.type == "output") != written:
        seen.append(await anext(stream))
        assert len("".join(e.output for e in seen if e.type == "output")) <= len(written), "a byte came twice"
    await asyncio.wait_for(flushed.wait(), 30)
    # flush() returned: everything written is stored and shown, while the task still runs.
    task = await tasks.get(task_id)
    assert (task.status, task.output) == ("running", written)
    # Written as fast as the handler could, the chunks travelled in far fewer reports than
    # there were chunks; each report is one stored event.
    outputs = [e for e in seen if e.type == "output"]
    assert len(outputs) < CHUNKS / 10, len(outputs)
    assert all(len(e.output.encode()) <= COALESCE_BYTES for e in outputs)

    # A watcher that resumes after any output event gets the rest exactly once.
    middle = outputs[len(outputs) // 2]
    resumed: list[Any] = []
    async for event in tasks.watch(task_id, after_sequence=middle.sequence):
        resumed.append(event)
        if "".join(e.output for e in resumed if e.type == "output") == written.split(middle.output, 1)[1]:
            break
    release.set()
    await tasks.wait(task_id, "completed")
    assert (await tasks.get(task_id)).output == written


async def test_output_and_other_reports_keep_their_order(tasks: Tasks, start_worker: StartWorker) -> None:
    async def handle(ctx: TaskContext) -> str:
        await ctx.output("before ")
        await ctx.progress(50, "half")  # waits for the output queued before it
        await ctx.output("after")
        return "ok"

    task_id = await tasks.submit()
    stream = aiter(tasks.watch(task_id))
    await start_worker(handle)
    kinds = []
    async for event in stream:
        if event.type in ("output", "progress"):
            kinds.append((event.type, event.output))
        if event.type == "end":
            break
    assert kinds == [("output", "before "), ("progress", ""), ("output", "after")]
    assert (await tasks.get(task_id)).output == "before after"


async def test_completing_flushes_first(tasks: Tasks, start_worker: StartWorker) -> None:
    async def handle(ctx: TaskContext) -> str:
        for i in range(2_000):
            await ctx.output(token(i))
        return "no flush of my own"

    task_id = await tasks.submit()
    await start_worker(handle)
    task = await tasks.wait(task_id, "completed")
    assert task.output == "".join(token(i) for i in range(2_000))


async def test_the_cap_stops_output_where_one_chunk_at_a_time_would(tasks: Tasks, start_worker: StartWorker) -> None:
    chunk = "x" * 999 + "\n"  # 1,000 bytes: 1,048 of them fit in 1 MiB, the 1,049th does not
    refused: list[ReportRejected] = []

    async def handle(ctx: TaskContext) -> str:
        try:
            for _ in range(1_200):
                await ctx.output(chunk)
            await ctx.flush()
        except ReportRejected as error:
            refused.append(error)
        return "kept going"

    task_id = await tasks.submit()
    await start_worker(handle)
    task = await tasks.wait(task_id, "completed")
    assert len(task.output) == (MAX_OUTPUT_BYTES // len(chunk)) * len(chunk)
    [error] = refused
    assert error.code == "INVALID_ARGUMENT" and "1048576" in error.message


async def test_a_refusal_the_handler_never_saw_fails_the_task(tasks: Tasks, start_worker: StartWorker) -> None:
    async def handle(ctx: TaskContext) -> str:
        for _ in range(4):
            await ctx.output("x" * (MAX_OUTPUT_BYTES // 4))  # 256 KiB, the largest chunk there is
        await ctx.output("one byte too many")  # queued; refused after the handler returned
        return "unaware"

    task_id = await tasks.submit()
    await start_worker(handle)
    task = await tasks.wait(task_id, "failed")
    assert task.error.code == "WORKER_ERROR" and "output was refused" in task.error.message
    assert len(task.output) == MAX_OUTPUT_BYTES
