"""The worker SDK against the real service: results, live progress and output, questions and
answers, failures, cancellation, refusal at connect, and tasks handed back when a worker goes."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

import agenttasks.worker
from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.worker import (
    ConnectRefused,
    LeaseLost,
    Result,
    TaskContext,
    TaskFailed,
    Worker,
)
from tests.support import api_for, make_settings
from tests.worker.conftest import LEASE_SECONDS, SWEEP_SECONDS, WAIT_SECONDS, StartWorker, Tasks, eventually

pytestmark = pytest.mark.asyncio


async def test_public_api_is_pinned() -> None:
    assert sorted(agenttasks.worker.__all__) == [
        "ClientMessage",
        "ConnectRefused",
        "ExecRunner",
        "Handler",
        "LeaseLost",
        "ReportRejected",
        "Result",
        "TaskContext",
        "TaskFailed",
        "Worker",
    ]
    for name in set(agenttasks.worker.__all__) - {"Handler"}:  # Handler is a type alias
        assert getattr(agenttasks.worker, name).__doc__, f"{name} has no docstring"


async def test_completes_with_text_and_data_and_sees_the_task(start_worker: StartWorker, tasks: Tasks) -> None:
    seen: list[TaskContext] = []

    async def handle(ctx: TaskContext) -> Result:
        seen.append(ctx)
        return Result(f"done: {ctx.message}", {"answer": 42, "tags": ["a", "b"]})

    await start_worker(handle)
    task_id = await tasks.submit("add it up", priority=7, metadata={"team": "finance"})
    task = await tasks.wait(task_id, "completed")

    assert task.result.text == "done: add it up"
    assert json_format.MessageToDict(task.result.data) == {"answer": 42, "tags": ["a", "b"]}
    (ctx,) = seen
    assert (ctx.task_id, ctx.agent_id, ctx.attempt) == (task_id, tasks.agent_id, 1)
    assert (ctx.message, ctx.priority, ctx.metadata) == ("add it up", 7, {"team": "finance"})
    assert ctx.messages == []
    assert not ctx.cancelled.is_set()


async def test_plain_string_result(start_worker: StartWorker, tasks: Tasks) -> None:
    async def handle(ctx: TaskContext) -> str:
        return "just text"

    await start_worker(handle)
    task = await tasks.wait(await tasks.submit(), "completed")
    assert task.result.text == "just text"


async def test_progress_and_output_are_seen_live(start_worker: StartWorker, tasks: Tasks) -> None:
    release = asyncio.Event()

    async def handle(ctx: TaskContext) -> str:
        await ctx.progress(40, "halfway")
        await ctx.output("line 1\n")
        await ctx.output("line 2\n")
        await release.wait()
        return "ok"

    task_id = await tasks.submit()
    stream = aiter(tasks.watch(task_id))
    assert (await anext(stream)).type == "snapshot"
    await start_worker(handle)

    events: list[Any] = []
    while "".join(e.output for e in events if e.type == "output") != "line 1\nline 2\n":
        events.append(await anext(stream))
    # All of it arrived while the handler was still blocked: live, not at the end. (Written in
    # one go, the two chunks may travel, and be stored, as one.)
    assert not release.is_set()
    progress = [e.progress for e in events if e.type == "progress"]
    assert [(p.percent, p.text) for p in progress] == [(40, "halfway")]
    task = await tasks.get(task_id)
    assert (task.status, task.output, task.progress.text) == ("running", "line 1\nline 2\n", "halfway")

    release.set()
    rest = [e async for e in stream]
    assert rest[-1].type == "end"
    assert (await tasks.get(task_id)).status == "completed"


async def test_ask_round_trip(start_worker: StartWorker, tasks: Tasks) -> None:
    got: list[str] = []

    async def handle(ctx: TaskContext) -> str:
        answer = await ctx.ask("Which year?")
        got.append(answer)
        return f"the year is {answer}"

    await start_worker(handle)
    task_id = await tasks.submit("when?")
    waiting = await tasks.wait(task_id, "awaiting_input")
    assert waiting.input_prompt == "Which year?"
    assert got == []

    await tasks.send(task_id, "1999")
    task = await tasks.wait(task_id, "completed")
    assert got == ["1999"]
    assert task.result.text == "the year is 1999"


async def test_messages_before_start_and_next_message(start_worker: StartWorker, tasks: Tasks) -> None:
    """Messages sent while queued arrive with the task; next_message walks them, then waits."""
    task_id = await tasks.submit("collect")
    await tasks.send(task_id, "first")
    await tasks.send(task_id, "second")

    async def handle(ctx: TaskContext) -> str:
        assert [m.text for m in ctx.messages] == ["first", "second"]
        seen = [(await ctx.next_message()).text, (await ctx.next_message()).text]
        await ctx.output("ready\n")
        seen.append((await ctx.next_message()).text)
        return ",".join(seen)

    await start_worker(handle)
    await tasks.wait_for(task_id, "the handler to be ready", lambda t: t.output == "ready\n")
    await tasks.send(task_id, "third")
    task = await tasks.wait(task_id, "completed")
    assert task.result.text == "first,second,third"


async def test_an_exception_fails_the_task_with_worker_error(start_worker: StartWorker, tasks: Tasks) -> None:
    async def handle(ctx: TaskContext) -> str:
        raise ValueError("the input makes no sense")

    await start_worker(handle)
    task = await tasks.wait(await tasks.submit(), "failed")
    assert (task.error.code, task.error.message) == ("WORKER_ERROR", "the input makes no sense")


async def test_task_failed_sets_code_and_message(start_worker: StartWorker, tasks: Tasks) -> None:
    async def handle(ctx: TaskContext) -> str:
        raise TaskFailed("BAD_INPUT", "no year given")

    await start_worker(handle)
    task = await tasks.wait(await tasks.submit(), "failed")
    assert (task.error.code, task.error.message) == ("BAD_INPUT", "no year given")


async def test_an_outcome_the_server_refuses_still_ends_the_task(start_worker: StartWorker, tasks: Tasks) -> None:
    """A malformed failure code is rejected by the server; the task then fails as WORKER_ERROR
    saying why, instead of running on until its timeout."""

    async def handle(ctx: TaskContext) -> str:
        raise TaskFailed("not upper snake", "oops")

    await start_worker(handle)
    task = await tasks.wait(await tasks.submit(), "failed")
    assert task.error.code == "WORKER_ERROR"
    assert task.error.message.startswith("the worker's failure was rejected: ")


async def test_cancel_reaches_a_busy_handler(start_worker: StartWorker, tasks: Tasks) -> None:
    started = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def handle(ctx: TaskContext) -> str:
        if ctx.message == "next":
            return "the slot was freed"
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome["cancelled_set"] = ctx.cancelled.is_set()
            outcome["reason"] = ctx.cancel_reason
            try:
                await ctx.output("too late\n")
            except LeaseLost as lost:
                outcome["late_report"] = lost.reason
            raise
        return "never"

    await start_worker(handle, capacity=1)
    task_id = await tasks.submit("busy")
    await eventually(started.is_set, "the handler to start")
    await tasks.cancel(task_id)

    await eventually(lambda: "late_report" in outcome, "the handler to see the cancellation")
    assert outcome == {
        "cancelled_set": True,
        "reason": "CANCELLED_BY_CLIENT",
        "late_report": "CANCELLED_BY_CLIENT",
    }
    task = await tasks.get(task_id)
    assert (task.status, task.output) == ("cancelled", "")
    # The only slot is free again: the next task runs.
    assert (await tasks.wait(await tasks.submit("next"), "completed")).result.text == "the slot was freed"


async def test_capacity_bounds_concurrent_tasks(start_worker: StartWorker, tasks: Tasks) -> None:
    release = asyncio.Event()
    running: set[str] = set()
    most = 0

    async def handle(ctx: TaskContext) -> str:
        nonlocal most
        running.add(ctx.task_id)
        most = max(most, len(running))
        try:
            await release.wait()
        finally:
            running.discard(ctx.task_id)
        return "ok"

    await start_worker(handle, capacity=2)
    ids = [await tasks.submit(f"task {i}") for i in range(3)]
    await eventually(lambda: len(running) == 2, "two tasks to run")
    statuses = sorted([(await tasks.get(i)).status for i in ids])
    assert statuses == ["queued", "running", "running"]
    release.set()
    for task_id in ids:
        await tasks.wait(task_id, "completed")
    assert most == 2


async def test_stopping_a_worker_hands_its_task_back(start_worker: StartWorker, tasks: Tasks) -> None:
    """The handler is cancelled and awaited, the server requeues the task (attempt 2), and the
    next worker finishes it."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(ctx: TaskContext) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    first = await start_worker(stuck)
    task_id = await tasks.submit("hand me back")
    await eventually(started.is_set, "the first worker to start the task")
    await first.__aexit__(None, None, None)
    assert cancelled.is_set()

    async def finish(ctx: TaskContext) -> str:
        return f"attempt {ctx.attempt}"

    await start_worker(finish)
    task = await tasks.wait(task_id, "completed")
    assert (task.result.text, task.attempt) == ("attempt 2", 2)


async def test_heartbeats_keep_the_lease(start_worker: StartWorker, tasks: Tasks) -> None:
    """A task outliving several lease periods stays with its worker (attempt 1, running)."""
    release = asyncio.Event()

    async def handle(ctx: TaskContext) -> str:
        await release.wait()
        return f"attempt {ctx.attempt}"

    await start_worker(handle)
    task_id = await tasks.submit()
    await tasks.wait(task_id, "running")
    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * LEASE_SECONDS

    async def lease_periods_passed() -> bool:
        task = await tasks.get(task_id)
        assert (task.status, task.attempt) == ("running", 1)
        return loop.time() > until

    await eventually(lease_periods_passed, "three lease periods")
    release.set()
    assert (await tasks.wait(task_id, "completed")).result.text == "attempt 1"


@pytest.mark.timeout(90)
async def test_reconnects_after_a_server_restart_without_running_a_task_twice(db_path: Path, tmp_path: Path) -> None:
    """The stream breaks: handlers are cancelled and finished before the worker reconnects, and
    the requeued task runs again (attempt 2) on the new connection."""
    settings = make_settings(db_path, lease_seconds=1.0, sweep_seconds=SWEEP_SECONDS)
    first = Service(settings)
    await first.start()
    key = await create_api_key(first.store, "default", Role.WORKER)
    admin = api_for(first.address, await create_api_key(first.store, "default", Role.CLIENT))
    agent_id = await admin.create_agent("restart-agent")
    await admin.channel.close()

    active = 0
    most = 0
    attempts: list[int] = []
    finish_second = asyncio.Event()

    async def handle(ctx: TaskContext) -> str:
        nonlocal active, most
        active += 1
        most = max(most, active)
        attempts.append(ctx.attempt)
        try:
            if ctx.attempt == 1:
                await asyncio.Event().wait()
            await finish_second.wait()
            return f"attempt {ctx.attempt}"
        finally:
            active -= 1

    worker = Worker(first.address, key, agent_id, handle, capacity=1, max_backoff=0.5)
    second: Service | None = None
    client = None
    async with worker:
        try:
            await asyncio.wait_for(worker.wait_connected(), WAIT_SECONDS)
            client = api_for(first.address, await create_api_key(first.store, "default", Role.CLIENT))
            task_id = (await client.submit(agent_id, "survive a restart")).task_id
            await eventually(lambda: attempts == [1], "the first attempt to start")
            await client.channel.close()
            await first.stop(grace=0.1)
            await eventually(lambda: active == 0, "the handler to be cancelled when the stream broke")

            second = Service(make_settings(db_path, grpc_port=first.port, lease_seconds=1.0, sweep_seconds=0.05))
            await second.start()
            client = api_for(second.address, await create_api_key(second.store, "default", Role.CLIENT))
            tasks = Tasks(client, agent_id)
            await eventually(lambda: attempts == [1, 2], "the requeued task to run again")
            finish_second.set()
            task = await tasks.wait(task_id, "completed")
            assert (task.result.text, task.attempt) == ("attempt 2", 2)
            assert most == 1
        finally:
            if client is not None:
                await client.channel.close()
            worker.stop()
    if second is not None:
        await second.stop()
    await first.stop()


@pytest.mark.parametrize(
    ("credential", "code"),
    [("client", "PERMISSION_DENIED"), ("bogus", "UNAUTHENTICATED")],
)
async def test_a_bad_key_is_fatal_at_connect(service: Service, agent_id: str, credential: str, code: str) -> None:
    key = await create_api_key(service.store, "default", Role.CLIENT) if credential == "client" else "atk_bogus_key"

    async def handle(ctx: TaskContext) -> str:
        return "never"

    worker = Worker(service.address, key, agent_id, handle)
    with pytest.raises(ConnectRefused) as refused:
        await asyncio.wait_for(worker.run(), WAIT_SECONDS)
    assert refused.value.code == code


async def test_an_unknown_agent_is_fatal_at_connect(service: Service, worker_key: str) -> None:
    async def handle(ctx: TaskContext) -> str:
        return "never"

    worker = Worker(service.address, worker_key, "0190f0f0-0000-7000-8000-000000000000", handle)
    with pytest.raises(ConnectRefused) as refused:
        await asyncio.wait_for(worker.run(), WAIT_SECONDS)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND.name


async def test_bad_arguments_are_refused_at_once() -> None:
    async def handle(ctx: TaskContext) -> str:
        return ""

    with pytest.raises(ValueError, match="capacity"):
        Worker("127.0.0.1:1", "key", "agent", handle, capacity=0)
    with pytest.raises(ValueError, match="agent_id"):
        Worker("127.0.0.1:1", "key", "", handle)


# --- regressions from review ---


async def test_result_data_that_is_not_json_fails_the_task_and_frees_the_slot(
    start_worker: StartWorker, tasks: Tasks
) -> None:
    from datetime import datetime

    async def handle(ctx: TaskContext) -> Result:
        if ctx.message == "bad":
            return Result("done", {"when": datetime.now()})
        return Result("fine")

    await start_worker(handle)  # capacity 1: a stuck slot would block the second task
    bad = await tasks.submit("bad")
    good = await tasks.submit("good")
    failed = await tasks.wait(bad, "failed")
    assert failed.error.code == "WORKER_ERROR" and "not JSON" in failed.error.message
    assert (await tasks.wait(good, "completed")).result.text == "fine"


async def test_an_oversized_result_fails_only_its_own_task(start_worker: StartWorker, tasks: Tasks) -> None:
    async def handle(ctx: TaskContext) -> str:
        return "x" * (5 * 1024 * 1024) if ctx.message == "huge" else "small"

    await start_worker(handle, capacity=2)
    huge = await tasks.submit("huge")
    small = await tasks.submit("small")
    failed = await tasks.wait(huge, "failed")
    assert failed.error.code == "WORKER_ERROR" and failed.attempt == 1  # not requeued: the stream held
    assert (await tasks.wait(small, "completed")).result.text == "small"


async def test_a_worker_exempts_what_its_process_holds_from_full_collections(
    service: Service, worker_key: str, tasks: Tasks
) -> None:
    async def handle(ctx: TaskContext) -> str:
        return "ok"

    for freeze, frozen in ((False, False), (True, True)):
        gc.unfreeze()
        try:
            worker = Worker(service.address, worker_key, tasks.agent_id, handle, freeze_gc=freeze)
            async with worker:
                async with asyncio.timeout(WAIT_SECONDS):
                    await worker.wait_connected()
                assert (gc.get_freeze_count() > 0) is frozen
                assert (await tasks.wait(await tasks.submit(), "completed")).result.text == "ok"
        finally:
            gc.unfreeze()  # give this test process's objects back to the collector
