"""The news one server sends the others: what a payload carries, and that it fits PostgreSQL."""

from __future__ import annotations

from agenttasks.core.model import EventType, Task, TaskEvent, TaskStatus, utcnow
from agenttasks.core.ports import TaskNews
from agenttasks.store.postgres_news import MAX_PAYLOAD_BYTES, Announcements, channel_for, parse


def task(task_id: str, last: int, status: TaskStatus = TaskStatus.RUNNING) -> Task:
    return Task(tenant="t", task_id=task_id, agent_id="agent", message="m", status=status, last_sequence=last)


def event(task_id: str, sequence: int) -> TaskEvent:
    return TaskEvent(
        tenant="t",
        task_id=task_id,
        sequence=sequence,
        type=EventType.OUTPUT,
        status=TaskStatus.RUNNING,
        time=utcnow(),
        data={},
    )


def test_a_batch_announces_each_task_once_with_the_range_of_its_events_and_its_last_status() -> None:
    first, second = Announcements(), Announcements()
    first.task(task("x", 3))
    first.event(event("x", 2))
    first.event(event("x", 3))
    first.task(task("quiet", 9))  # written without events: nothing to hear of
    second.task(task("x", 4, TaskStatus.COMPLETED))
    second.event(event("x", 4))
    second.key_revoked("key1")
    batch = Announcements()
    batch.merge(first)
    batch.merge(second)
    (payload,) = batch.payloads("me")
    origin, news, keys = parse(payload)
    assert origin == "me" and keys == ["key1"]
    assert news == [TaskNews("t", "agent", "x", 2, 4, TaskStatus.COMPLETED)]


def test_many_changes_are_split_into_payloads_postgresql_accepts_and_none_is_lost() -> None:
    batch = Announcements()
    for i in range(2000):
        batch.task(task(f"task-{i:05d}-" + "x" * 40, 7))
        batch.event(event(f"task-{i:05d}-" + "x" * 40, 7))
    for i in range(500):
        batch.key_revoked(f"key-{i}")
    payloads = batch.payloads("origin")
    assert len(payloads) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD_BYTES for p in payloads)
    parsed = [parse(p) for p in payloads]
    assert sorted(n.task_id for _, news, _ in parsed for n in news) == sorted(batch.tasks)
    assert sorted(k for _, _, keys in parsed for k in keys) == sorted(f"key-{i}" for i in range(500))


def test_each_schema_has_its_own_channel() -> None:
    assert channel_for("public") == "agenttasks"
    assert channel_for("t_1") != channel_for("t_2")
    assert len(channel_for("s" * 63)) <= 63
