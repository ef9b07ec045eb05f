"""The watch protocol on its own: a watcher that fell behind still ends on shutdown, and a
failing listener does not keep a change from the others."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agenttasks.core import watch
from agenttasks.core.model import EventType, Task, TaskEvent, TaskResult, TaskStatus


@pytest.mark.asyncio
async def test_a_lagging_watcher_ends_with_server_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "QUEUE_LIMIT", 3)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    task = Task(tenant="t", task_id="x", agent_id="a", message="m", last_sequence=1, created_at=now)
    hub = watch.EventHub()
    sub = hub.subscribe("x")
    events = [TaskEvent("t", "x", n, EventType.OUTPUT, TaskStatus.RUNNING, now) for n in range(2, 12)]
    hub.publish(task, events)  # more than the queue holds: the watcher is now lagging
    hub.close()
    reads = 0

    async def fetch_after(seq: int) -> list[TaskEvent]:
        nonlocal reads
        reads += 1
        return [e for e in events if e.sequence > seq]

    async def run() -> list[object]:
        return [item async for item in watch.follow(sub, task, 0, fetch_after)]

    items = await asyncio.wait_for(run(), 5)
    assert isinstance(items[0], watch.Snapshot)
    assert [e.sequence for e in items if isinstance(e, TaskEvent)] == list(range(2, 12))
    end = items[-1]
    assert isinstance(end, watch.StreamEnd) and end.reason == watch.END_SERVER_SHUTDOWN
    assert reads <= 3


@pytest.mark.asyncio
async def test_a_failing_listener_does_not_keep_the_change_from_the_others(caplog: pytest.LogCaptureFixture) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    task = Task(tenant="t", task_id="x", agent_id="a", message="m", last_sequence=2, created_at=now)
    hub = watch.EventHub()
    sub = hub.subscribe("x")
    heard: list[int] = []

    def broken(task: Task, events: list[TaskEvent]) -> None:
        raise RuntimeError("listener bug")

    hub.listen(broken)
    hub.listen(lambda task, events: heard.extend(e.sequence for e in events))
    hub.publish(task, [TaskEvent("t", "x", 2, EventType.OUTPUT, TaskStatus.RUNNING, now)])  # does not raise
    assert heard == [2]
    event = await asyncio.wait_for(sub.next(), 5)  # the watcher has it too
    assert event is not None and event.sequence == 2
    assert "listener failed on task x" in caplog.text


def _task(seq: int, status: TaskStatus = TaskStatus.RUNNING, task_id: str = "x") -> Task:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Task(
        tenant="t", task_id=task_id, agent_id="a", message="m", last_sequence=seq, status=status, created_at=now
    )


def _event(seq: int, status: TaskStatus = TaskStatus.RUNNING, task_id: str = "x") -> TaskEvent:
    return TaskEvent("t", task_id, seq, EventType.STATUS, status, datetime(2026, 1, 1, tzinfo=UTC))


def test_the_hub_remembers_tasks_only_when_asked_and_forgets_a_deleted_agents() -> None:
    hub = watch.EventHub()
    hub.publish(_task(2), [_event(2)])
    assert hub.latest("x") is None  # replicas: never from memory
    hub.keep_latest()
    hub.publish(_task(3), [_event(3)])
    remembered = hub.latest("x")
    assert remembered is not None and remembered.last_sequence == 3
    hub.publish(_task(4, TaskStatus.COMPLETED), [_event(4, TaskStatus.COMPLETED)])
    remembered = hub.latest("x")
    assert remembered is not None and remembered.status is TaskStatus.COMPLETED
    hub.forget_agent("other tenant", "a")
    assert hub.latest("x") is not None
    hub.forget_agent("t", "a")
    assert hub.latest("x") is None


def test_the_hub_keeps_the_newer_state_when_publishers_run_out_of_order() -> None:
    hub = watch.EventHub()
    hub.keep_latest()
    hub.publish(_task(5), [_event(5)])
    hub.publish(_task(4), [_event(4)])
    remembered = hub.latest("x")
    assert remembered is not None and remembered.last_sequence == 5


def test_the_hub_forgets_the_least_recently_changed_beyond_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "LATEST_LIMIT", 2)
    hub = watch.EventHub()
    hub.keep_latest()
    for name in ("a", "b", "c"):
        hub.publish(_task(1, task_id=name), [_event(1, task_id=name)])
    hub.publish(_task(2, task_id="b"), [_event(2, task_id="b")])
    hub.publish(_task(1, task_id="d"), [_event(1, task_id="d")])
    assert [n for n in "abcd" if hub.latest(n) is not None] == ["b", "d"]


def test_the_hub_does_not_keep_large_tasks() -> None:
    hub = watch.EventHub()
    hub.keep_latest()
    hub.publish(replace(_task(1), message="m" * (watch.LATEST_TEXT + 1)), [_event(1)])
    hub.publish(replace(_task(1, task_id="y"), metadata={"k": "v" * watch.LATEST_TEXT}), [_event(1, task_id="y")])
    assert hub.latest("x") is None and hub.latest("y") is None
    hub.publish(_task(1, task_id="z"), [_event(1, task_id="z")])
    done = replace(_task(2, TaskStatus.COMPLETED, "z"), result=TaskResult("r", {"k": "v" * watch.LATEST_TEXT}))
    hub.publish(done, [_event(2, TaskStatus.COMPLETED, "z")])
    assert hub.latest("z") is None  # its result made it large
