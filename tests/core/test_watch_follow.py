"""The watch protocol on its own: a watcher that fell behind still ends on shutdown, and a
failing listener does not keep a change from the others."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from agenttasks.core import watch
from agenttasks.core.model import EventType, Task, TaskEvent, TaskStatus


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
