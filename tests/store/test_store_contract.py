"""The storage contract: what every `Store` backend must do, run against each of them.

Only the `Store`/`ReadTx`/`WriteTx` protocol is used here, so a new backend passes by adding
itself to `store_url` in conftest.py. Backend details (WAL, group commit, crash safety) are
tested beside the backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from agenttasks.core.model import (
    Agent,
    AgentStatus,
    ApiKeyRecord,
    CallbackMode,
    DeliveryState,
    EventType,
    IdempotencyRecord,
    Progress,
    Role,
    SigningSecret,
    Task,
    TaskError,
    TaskEvent,
    TaskResult,
    TaskStatus,
    WebhookDelivery,
    utcnow,
)
from agenttasks.core.ports import ReadTx, Store, WriteTx
from agenttasks.store import open_store

pytestmark = pytest.mark.asyncio

MakeAgent = Callable[..., Agent]
MakeTask = Callable[..., Task]
When = Callable[[float], datetime]

METADATA = {
    "team": "núcleo ✓",
    "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    "z-first": 1,
    "a-second": "order is kept",
}


class Boom(Exception):
    """Raised by a write function on purpose."""


async def add_agent(store: Store, agent: Agent) -> Agent:
    await store.write(lambda tx: tx.insert_agent(agent))
    return agent


async def add_task(store: Store, task: Task) -> Task:
    return await store.write(lambda tx: tx.insert_task(task))


async def count_tasks(store: Store, agent_id: str = "agent-1", tenant: str = "tenant-a") -> int:
    tasks = await store.read(lambda tx: tx.list_tasks(tenant, agent_id, status=None, before_seq=None, limit=100_000))
    return len(tasks)


async def test_agent_round_trips_and_updates(store: Store, make_agent: MakeAgent, when: When) -> None:
    agent = make_agent(
        description="does things",
        status=AgentStatus.PAUSED,
        status_message="maintenance",
        default_timeout_seconds=120,
        max_attempts=7,
        input_timeout_seconds=999,
        metadata=METADATA,
        created_at=when(0.000001),
        updated_at=when(2.5),
    )
    await add_agent(store, agent)
    assert await store.read(lambda tx: tx.get_agent("tenant-a", "agent-1")) == agent

    changed = dataclasses.replace(agent, name="renamed", status=AgentStatus.ERROR, metadata={}, updated_at=when(9))
    await store.write(lambda tx: tx.update_agent(changed))
    stored = await store.read(lambda tx: tx.get_agent("tenant-a", "agent-1"))
    assert stored == changed
    assert stored is not None and list(stored.metadata) == []


async def test_agents_page_oldest_first(store: Store, make_agent: MakeAgent, when: When) -> None:
    # Two agents share a created_at so the agent_id tie-break is exercised.
    created = {"agent-c": when(1), "agent-a": when(2), "agent-b": when(2), "agent-d": when(3)}
    for agent_id, created_at in created.items():
        await add_agent(store, make_agent(agent_id, created_at=created_at))
    await add_agent(store, make_agent("agent-x", tenant="tenant-b"))

    seen: list[str] = []
    cursor: tuple[datetime, str] | None = None
    while True:
        page = await store.read(lambda tx, c=cursor: tx.list_agents("tenant-a", after_created=c, limit=3))
        seen += [a.agent_id for a in page]
        if len(page) < 3:
            break
        cursor = (page[-1].created_at, page[-1].agent_id)
    assert seen == ["agent-c", "agent-a", "agent-b", "agent-d"]


async def test_task_round_trips_every_field(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())
    task = make_task(
        "task-1",
        status=TaskStatus.AWAITING_INPUT,
        priority=9,
        metadata=METADATA,
        callback_mode=CallbackMode.WEBHOOK,
        webhook_url="https://example.test/hook?a=1",
        timeout_seconds=77,
        created_at=when(0.000001),
        updated_at=when(1.999999),
        started_at=when(1.5),
        completed_at=when(3.25),
        progress=Progress(percent=42.5, text="halfway"),
        output_bytes=17,
        output_after=2,
        result=TaskResult(text="done", data={"answer": [4, 2], "ok": True}),
        error=TaskError(code="worker_lost", message="gone"),
        input_prompt="which one?",
        attempt=2,
        last_sequence=5,
        status_reason="needs input",
        worker_id="worker-1",
        lease_expires_at=when(30),
        deadline_at=when(86400),
        run_seconds_left=12.5,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate="vendor=opaque,other=1",
    )
    inserted = await add_task(store, task)
    assert inserted.seq > 0
    assert inserted == dataclasses.replace(task, seq=inserted.seq)
    assert await store.read(lambda tx: tx.get_task("tenant-a", "task-1")) == inserted

    bare = await add_task(store, make_task("task-2", result=TaskResult(text="no data")))
    stored = await store.read(lambda tx: tx.get_task("tenant-a", "task-2"))
    assert stored == bare
    assert stored is not None
    assert (stored.progress, stored.error, stored.started_at, stored.completed_at) == (None, None, None, None)
    assert stored.result == TaskResult(text="no data", data=None)


async def test_update_task_replaces_mutable_columns(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())
    task = await add_task(store, make_task("task-1", progress=Progress(10), error=TaskError("x")))
    changed = dataclasses.replace(
        task,
        status=TaskStatus.COMPLETED,
        priority=1,
        updated_at=when(5),
        started_at=when(4),
        completed_at=when(5),
        progress=None,
        output_bytes=3,
        output_after=1,
        result=TaskResult(text="r", data={"k": "v"}),
        error=None,
        attempt=1,
        last_sequence=3,
        status_reason="finished",
        worker_id="",
        lease_expires_at=None,
        deadline_at=None,
        run_seconds_left=None,
    )
    await store.write(lambda tx: tx.update_task(changed))
    assert await store.read(lambda tx: tx.get_task("tenant-a", "task-1")) == changed


async def test_datetimes_come_back_as_aware_utc(store: Store, make_agent: MakeAgent, when: When) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = when(0).astimezone(plus_two)
    await add_agent(store, make_agent(created_at=local, updated_at=local))
    stored = await store.read(lambda tx: tx.get_agent("tenant-a", "agent-1"))
    assert stored is not None
    assert stored.created_at == when(0)
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored.created_at.microsecond == when(0).microsecond


async def test_other_tenants_see_nothing(store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When) -> None:
    await add_agent(store, make_agent())
    task = await add_task(store, make_task("task-1", started_at=when(1), completed_at=when(2)))
    await store.write(lambda tx: tx.update_task(dataclasses.replace(task, status=TaskStatus.COMPLETED)))
    await add_task(store, make_task("task-2"))
    event = TaskEvent("tenant-a", "task-1", 1, EventType.CREATED, TaskStatus.QUEUED, when(1))
    await store.write(lambda tx: tx.append_event(event))
    record = IdempotencyRecord("tenant-a", "submit:agent-1", "k", "h", {}, when(0), utcnow() + timedelta(hours=1))
    await store.write(lambda tx: tx.put_idempotency(record))
    await store.write(lambda tx: tx.put_api_key(ApiKeyRecord("key-1", "tenant-a", Role.ADMIN, "hash", when(0))))

    def look(tx: ReadTx) -> list[object]:
        other = "tenant-b"
        return [
            tx.get_agent(other, "agent-1"),
            tx.list_agents(other, after_created=None, limit=10),
            tx.get_task(other, "task-1"),
            tx.list_tasks(other, "agent-1", status=None, before_seq=None, limit=10),
            tx.unfinished_tasks(other, "agent-1"),
            tx.events_after(other, "task-1", 0, 10),
            tx.queued_at_or_above(other, "agent-1", 0),
            tx.recent_run_seconds(other, "agent-1", 10),
            tx.get_idempotency(other, "submit:agent-1", "k"),
            tx.list_api_keys(other),
        ]

    assert await store.read(look) == [None, [], None, [], [], [], 0, None, None, []]
    # The owner does see them, so the empty answers above are isolation, not missing data.
    assert await store.read(lambda tx: tx.queued_at_or_above("tenant-a", "agent-1", 0)) == 1


async def test_list_tasks_newest_first_with_filter_and_paging(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await add_agent(store, make_agent())
    await add_agent(store, make_agent("agent-2"))
    statuses = [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.QUEUED]
    inserted = [await add_task(store, make_task(f"task-{i}", status=s)) for i, s in enumerate(statuses)]
    await add_task(store, make_task("other-agent", agent_id="agent-2"))
    assert [t.seq for t in inserted] == sorted(t.seq for t in inserted)

    async def pages(status: TaskStatus | None, limit: int) -> list[list[str]]:
        result: list[list[str]] = []
        before: int | None = None
        while True:
            page = await store.read(
                lambda tx, b=before: tx.list_tasks("tenant-a", "agent-1", status=status, before_seq=b, limit=limit)
            )
            if not page:
                return result
            result.append([t.task_id for t in page])
            before = page[-1].seq

    assert await pages(None, 2) == [["task-4", "task-3"], ["task-2", "task-1"], ["task-0"]]
    assert await pages(TaskStatus.QUEUED, 2) == [["task-4", "task-2"], ["task-0"]]
    assert await pages(TaskStatus.CANCELLED, 2) == []


async def test_unfinished_tasks_are_the_non_terminal_ones_oldest_first(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await add_agent(store, make_agent())
    for status in TaskStatus:  # every status, so a new one cannot be forgotten by a backend
        await add_task(store, make_task(f"task-{status.value}", status=status))
    unfinished = await store.read(lambda tx: tx.unfinished_tasks("tenant-a", "agent-1"))
    assert [t.status for t in unfinished] == [s for s in TaskStatus if not s.terminal]


async def test_events_after_in_order_with_limit(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())
    await add_task(store, make_task("task-1"))
    events = [
        TaskEvent("tenant-a", "task-1", n, EventType.PROGRESS, TaskStatus.RUNNING, when(n), {"percent": n * 10})
        for n in range(1, 8)
    ]

    def append_backwards(tx: WriteTx) -> None:
        for event in reversed(events):
            tx.append_event(event)

    await store.write(append_backwards)
    assert await store.read(lambda tx: tx.events_after("tenant-a", "task-1", 0, 100)) == events
    assert await store.read(lambda tx: tx.events_after("tenant-a", "task-1", 2, 3)) == events[2:5]
    assert await store.read(lambda tx: tx.events_after("tenant-a", "task-1", 7, 10)) == []

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.write(lambda tx: tx.append_event(events[0]))


async def test_failed_write_leaves_nothing_and_others_commit(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await add_agent(store, make_agent())

    def half_then_boom(tx: WriteTx) -> None:
        tx.insert_task(make_task("doomed"))
        tx.set_meta("doomed", "yes")
        raise Boom("on purpose")

    results = await asyncio.gather(
        add_task(store, make_task("before")),
        store.write(half_then_boom),
        add_task(store, make_task("after")),
        return_exceptions=True,
    )
    assert isinstance(results[1], Boom)
    assert isinstance(results[0], Task) and isinstance(results[2], Task)

    def look(tx: ReadTx) -> tuple[object, ...]:
        return (
            tx.get_task("tenant-a", "doomed"),
            tx.get_meta("doomed"),
            tx.get_task("tenant-a", "before") is not None,
            tx.get_task("tenant-a", "after") is not None,
        )

    assert await store.read(look) == (None, None, True, True)


async def test_read_errors_reach_the_caller(store: Store) -> None:
    def fail(tx: ReadTx) -> None:
        raise Boom("read")

    with pytest.raises(Boom):
        await store.read(fail)
    assert await store.read(lambda tx: tx.get_meta("anything")) is None


async def test_updating_a_missing_row_raises(store: Store, make_agent: MakeAgent, make_task: MakeTask) -> None:
    with pytest.raises(LookupError):
        await store.write(lambda tx: tx.update_agent(make_agent("nobody")))
    with pytest.raises(LookupError):
        await store.write(lambda tx: tx.update_task(make_task("nothing")))


async def test_many_concurrent_writes_each_commit_once(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await add_agent(store, make_agent())
    inserted = await asyncio.gather(*(add_task(store, make_task(f"task-{i:03}")) for i in range(200)))
    assert len({t.seq for t in inserted}) == 200
    assert await count_tasks(store) == 200


async def test_data_survives_close_and_reopen(store_url: str, make_agent: MakeAgent, make_task: MakeTask) -> None:
    first = await open_store(store_url)
    await add_agent(first, make_agent())
    task = await add_task(first, make_task("task-1", metadata=METADATA))
    await first.write(lambda tx: tx.set_meta("secret", "s3cr3t"))
    await first.close()

    second = await open_store(store_url)
    try:
        assert await second.read(lambda tx: tx.get_task("tenant-a", "task-1")) == task
        assert await second.read(lambda tx: tx.get_meta("secret")) == "s3cr3t"
        # seq keeps growing across restarts: FIFO order and list cursors stay valid.
        later = await add_task(second, make_task("task-2"))
        assert later.seq > task.seq
    finally:
        await second.close()


async def test_closed_store_refuses_work_and_closes_twice(store_url: str) -> None:
    opened = await open_store(store_url)
    await opened.close()
    await opened.close()
    with pytest.raises(RuntimeError, match="closed"):
        await opened.read(lambda tx: tx.get_meta("x"))
    with pytest.raises(RuntimeError, match="closed"):
        await opened.write(lambda tx: tx.set_meta("x", "y"))


async def test_queued_counts_follow_every_way_into_and_out_of_the_queue(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())
    await add_agent(store, make_agent("agent-2"))
    await add_task(store, make_task("low-1", priority=1))
    high = await add_task(store, make_task("high-1", priority=9))
    mid = await add_task(store, make_task("mid-1", priority=5))
    await add_task(store, make_task("running-high", priority=9, status=TaskStatus.RUNNING))
    await add_task(store, make_task("mid-2", priority=5))
    await add_task(store, make_task("other-agent-high", agent_id="agent-2", priority=9))

    async def counts(agent_id: str = "agent-1") -> list[int]:
        def read(tx: ReadTx) -> list[int]:
            return [tx.queued_at_or_above("tenant-a", agent_id, p) for p in (10, 9, 5, 1)]

        return await store.read(read)

    assert await counts() == [0, 1, 3, 4]  # running-high and agent-2's task are not counted
    assert await counts("agent-2") == [0, 1, 1, 1]

    # Claimed, then requeued after a lost lease; cancelled; priority changed while queued.
    running = dataclasses.replace(high, status=TaskStatus.RUNNING, worker_id="w", updated_at=when(2))
    await store.write(lambda tx: tx.update_task(running))
    assert await counts() == [0, 0, 2, 3]
    await store.write(lambda tx: tx.update_task(dataclasses.replace(running, status=TaskStatus.QUEUED, worker_id="")))
    assert await counts() == [0, 1, 3, 4]
    await store.write(lambda tx: tx.update_task(dataclasses.replace(mid, status=TaskStatus.CANCELLED)))
    assert await counts() == [0, 1, 2, 3]
    await store.write(lambda tx: tx.update_task(dataclasses.replace(high, priority=10)))
    assert await counts() == [1, 1, 2, 3]
    # An update that leaves a queued task queued at its priority changes nothing.
    await store.write(lambda tx: tx.update_task(dataclasses.replace(high, priority=10, message="edited")))
    assert await counts() == [1, 1, 2, 3]

    await store.write(lambda tx: tx.delete_agent("tenant-a", "agent-2"))
    assert await counts("agent-2") == [0, 0, 0, 0]
    assert await counts() == [1, 1, 2, 3]


async def test_queued_counts_inside_writes_follow_the_writes_before_them(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    # Every Submit asks how many tasks are queued ahead of its own, inside its write. Writes
    # queued together share one transaction (PostgreSQL reads the counts once per batch and
    # keeps them up to date itself): each must still see every change made before it, its own
    # batch's included, and nothing of a write that failed.
    await add_agent(store, make_agent())
    high = await add_task(store, make_task("high", priority=9))
    mid = await add_task(store, make_task("mid", priority=5))
    await add_task(store, make_task("low", priority=1))

    def counts(tx: WriteTx) -> list[int]:
        return [tx.queued_at_or_above("tenant-a", "agent-1", p) for p in (10, 9, 5, 1)]

    def submit(tx: WriteTx) -> list[int]:
        before = counts(tx)
        tx.insert_task(make_task("new-mid", priority=5))
        tx.insert_task(make_task("new-running", priority=9, status=TaskStatus.RUNNING))
        return before + counts(tx)

    def claim_read(tx: WriteTx) -> list[int]:
        task = tx.get_task("tenant-a", "high")
        assert task is not None
        tx.update_task(dataclasses.replace(task, status=TaskStatus.RUNNING, worker_id="w", updated_at=when(2)))
        return counts(tx)

    def cancel_unread(tx: WriteTx) -> list[int]:
        # Written from a copy this transaction never read: the counts are read again.
        tx.update_task(dataclasses.replace(mid, status=TaskStatus.CANCELLED, updated_at=when(3)))
        return counts(tx)

    def failing(tx: WriteTx) -> None:
        counts(tx)
        tx.insert_task(make_task("rolled-back", priority=10))
        raise Boom

    def agent_then_queue(tx: WriteTx) -> list[int]:
        # Reading the agent may ask for its counts too (PostgreSQL): a write before they are
        # read must still count.
        assert tx.get_agent("tenant-a", "agent-1") is not None
        tx.insert_task(make_task("after-agent", priority=1))
        return counts(tx)

    def claim_next(tx: WriteTx) -> list[int]:
        before = counts(tx)
        first = tx.next_queued("tenant-a", "agent-1", 1)[0]
        tx.update_task(dataclasses.replace(first, status=TaskStatus.RUNNING, worker_id="w", updated_at=when(4)))
        requeued = dataclasses.replace(high, status=TaskStatus.QUEUED, priority=1, updated_at=when(5))
        tx.update_task(requeued)  # read earlier in the batch, now back in the queue lower down
        return before + counts(tx)

    results = await asyncio.gather(
        *(store.write(fn) for fn in (submit, claim_read, cancel_unread, failing, agent_then_queue, claim_next)),
        return_exceptions=True,
    )
    assert results[0] == [0, 1, 2, 3, 0, 1, 3, 4]
    assert results[1] == [0, 0, 2, 3]
    assert results[2] == [0, 0, 1, 2]
    assert isinstance(results[3], Boom)
    assert results[4] == [0, 0, 1, 3]
    # new-mid was next (priority 5) and is claimed; high comes back at priority 1.
    assert results[5] == [0, 0, 1, 3, 0, 0, 0, 3]

    def stored(tx: ReadTx) -> list[int]:
        return [tx.queued_at_or_above("tenant-a", "agent-1", p) for p in (10, 9, 5, 1)]

    assert await store.read(stored) == [0, 0, 0, 3]


async def test_recent_run_seconds_is_the_mean_of_the_latest_completions(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())

    async def recent(limit: int) -> float | None:
        return await store.read(lambda tx: tx.recent_run_seconds("tenant-a", "agent-1", limit))

    assert await recent(10) is None
    # Inserted out of completion order: "latest" is by completion time, not insertion.
    runs = [(100, 2.0), (300, 6.0), (200, 4.0), (400, 10.0)]
    for i, (finished, seconds) in enumerate(runs):
        await add_task(
            store,
            make_task(
                f"done-{i}",
                status=TaskStatus.COMPLETED,
                started_at=when(finished - seconds),
                completed_at=when(finished),
            ),
        )
    # Not counted: no start time, failed, still running.
    await add_task(store, make_task("no-start", status=TaskStatus.COMPLETED, completed_at=when(500)))
    await add_task(store, make_task("failed", status=TaskStatus.FAILED, started_at=when(0), completed_at=when(600)))
    await add_task(store, make_task("running", status=TaskStatus.RUNNING, started_at=when(0)))

    assert await recent(2) == pytest.approx((10.0 + 6.0) / 2)
    assert await recent(100) == pytest.approx((2.0 + 6.0 + 4.0 + 10.0) / 4)


async def test_idempotency_records_expire(store: Store, when: When) -> None:
    now = utcnow()
    live = IdempotencyRecord(
        "tenant-a", "submit:agent-1", "key-1", "hash-1", {"task_id": "t1", "n": [1]}, when(0), now + timedelta(hours=1)
    )
    expired = IdempotencyRecord(
        "tenant-a", "submit:agent-1", "key-2", "hash-2", {"task_id": "t2"}, when(0), now - timedelta(seconds=1)
    )
    for record in (live, expired):
        await store.write(lambda tx, r=record: tx.put_idempotency(r))

    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "submit:agent-1", "key-1")) == live
    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "submit:agent-1", "key-2")) is None
    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "other-scope", "key-1")) is None

    # A new answer under an expired key replaces it, even before the purge ran.
    renewed = dataclasses.replace(expired, request_hash="hash-3", expires_at=now + timedelta(hours=1))
    await store.write(lambda tx: tx.put_idempotency(renewed))
    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "submit:agent-1", "key-2")) == renewed

    later = now + timedelta(hours=2)
    assert await store.write(lambda tx: tx.purge_idempotency(later, 1)) == 1  # bounded by its limit
    assert await store.write(lambda tx: tx.purge_idempotency(later, 10)) == 1
    assert await store.write(lambda tx: tx.purge_idempotency(later, 10)) == 0
    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "submit:agent-1", "key-1")) is None


async def test_api_keys_put_list_and_revoke(store: Store, when: When) -> None:
    keys = [
        ApiKeyRecord("key-2", "tenant-a", Role.CLIENT, "h2", when(2), description="ci"),
        ApiKeyRecord("key-1", "tenant-a", Role.ADMIN, "h1", when(1)),
        ApiKeyRecord("key-3", "tenant-b", Role.WORKER, "h3", when(3)),
    ]
    for key in keys:
        await store.write(lambda tx, k=key: tx.put_api_key(k))

    assert await store.read(lambda tx: tx.get_api_key("key-3")) == keys[2]
    assert await store.read(lambda tx: tx.get_api_key("missing")) is None
    assert await store.read(lambda tx: tx.list_api_keys("tenant-a")) == [keys[1], keys[0]]

    assert await store.write(lambda tx: tx.revoke_api_key("key-2", when(10))) is True
    assert await store.write(lambda tx: tx.revoke_api_key("key-2", when(20))) is True
    assert await store.write(lambda tx: tx.revoke_api_key("missing", when(10))) is False
    revoked = await store.read(lambda tx: tx.get_api_key("key-2"))
    assert revoked == dataclasses.replace(keys[0], revoked_at=when(10))  # the first revocation stands


async def test_meta_set_and_overwrite(store: Store) -> None:
    assert await store.read(lambda tx: tx.get_meta("jwt_secret")) is None
    await store.write(lambda tx: tx.set_meta("jwt_secret", "one"))
    await store.write(lambda tx: tx.set_meta("jwt_secret", "two"))
    assert await store.read(lambda tx: tx.get_meta("jwt_secret")) == "two"


async def test_delete_agent_removes_its_tasks_and_events_but_keeps_idempotency(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    later = utcnow() + timedelta(hours=1)

    def answer(scope: str, key: str, response: dict[str, object]) -> IdempotencyRecord:
        return IdempotencyRecord("tenant-a", scope, key, "h", response, when(0), later)

    for agent_id in ("agent-1", "agent-2"):
        task_id = f"task-of-{agent_id}"
        await add_agent(store, make_agent(agent_id))
        await add_task(store, make_task(task_id, agent_id=agent_id))
        event = TaskEvent("tenant-a", task_id, 1, EventType.CREATED, TaskStatus.QUEUED, when(1))
        await store.write(lambda tx, e=event: tx.append_event(e))
        # The answers the core keeps: a submit names agent and task, a message only the task.
        records = [
            answer("submit", f"s-{agent_id}", {"task_id": task_id, "agent_id": agent_id}),
            answer("message", f"m-{agent_id}", {"task_id": task_id, "message_id": "m"}),
        ]
        for record in records:
            await store.write(lambda tx, r=record: tx.put_idempotency(r))
    await store.write(lambda tx: tx.put_idempotency(answer("other", "o", {"unrelated": True})))

    await store.write(lambda tx: tx.delete_agent("tenant-a", "agent-1"))

    def look(tx: ReadTx, agent_id: str) -> tuple[bool, bool, int, bool, bool]:
        return (
            tx.get_agent("tenant-a", agent_id) is not None,
            tx.get_task("tenant-a", f"task-of-{agent_id}") is not None,
            len(tx.events_after("tenant-a", f"task-of-{agent_id}", 0, 10)),
            tx.get_idempotency("tenant-a", "submit", f"s-{agent_id}") is not None,
            tx.get_idempotency("tenant-a", "message", f"m-{agent_id}") is not None,
        )

    # Idempotency answers outlive the agent: a retry still gets its original answer until expiry.
    assert await store.read(lambda tx: look(tx, "agent-1")) == (False, False, 0, True, True)
    assert await store.read(lambda tx: look(tx, "agent-2")) == (True, True, 1, True, True)
    assert await store.read(lambda tx: tx.get_idempotency("tenant-a", "other", "o")) is not None
    # A task id of the deleted agent can be used again: nothing of it is left behind.
    await add_agent(store, make_agent("agent-1"))
    await add_task(store, make_task("task-of-agent-1"))


# --- dispatch and leases ---


async def test_next_queued_is_priority_first_then_fifo_within_tenant(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await add_agent(store, make_agent("agent-1"))
    await add_agent(store, make_agent("agent-x", tenant="tenant-b"))
    for task_id, priority in [("a", 5), ("b", 9), ("c", 5), ("d", 1), ("e", 9)]:
        await add_task(store, make_task(task_id, priority=priority))
    await add_task(store, make_task("running", priority=10, status=TaskStatus.RUNNING))
    await add_task(store, make_task("foreign", agent_id="agent-x", tenant="tenant-b", priority=10))
    order = await store.read(lambda tx: [t.task_id for t in tx.next_queued("tenant-a", "agent-1", 10)])
    assert order == ["b", "e", "a", "c", "d"]
    assert await store.read(lambda tx: [t.task_id for t in tx.next_queued("tenant-a", "agent-1", 2)]) == ["b", "e"]
    assert await store.read(lambda tx: tx.next_queued("tenant-b", "agent-1", 10)) == []


async def test_prefetched_tasks_are_read_once_then_as_the_function_changed_them(
    store: Store, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    # A batch of reports reads its tasks in one go; each report then gets its own task, and a
    # second read of one (two reports on one task) sees what the first report wrote.
    await add_agent(store, make_agent("agent-1"))
    for task_id in ("a", "b", "c"):
        await add_task(store, make_task(task_id, status=TaskStatus.RUNNING, worker_id="w1"))

    def reports(tx: WriteTx) -> list[tuple[str, str]]:
        tx.prefetch_tasks("tenant-a", ["b", "a", "missing", "a"])
        seen: list[tuple[str, str]] = []
        for task_id in ("a", "b", "a", "missing", "c"):
            task = tx.get_task("tenant-a", task_id)
            if task is None:
                seen.append((task_id, "none"))
                continue
            seen.append((task_id, task.status_reason or "-"))
            tx.update_task(dataclasses.replace(task, status_reason=f"seen {task_id}"))
        return seen

    seen = await store.write(reports)
    assert seen == [("a", "-"), ("b", "-"), ("a", "seen a"), ("missing", "none"), ("c", "-")]
    stored = await store.read(lambda tx: [tx.get_task("tenant-a", i) for i in ("a", "b", "c")])
    assert [t.status_reason for t in stored if t is not None] == ["seen a", "seen b", "seen c"]

    def changed_first(tx: WriteTx) -> str:
        # A prefetched task this function changes before it reads it: the read sees the change.
        tx.prefetch_tasks("tenant-a", ["a", "b"])
        c = tx.get_task("tenant-a", "c")
        assert c is not None
        tx.update_task(dataclasses.replace(c, task_id="a", status_reason="changed"))
        again = tx.get_task("tenant-a", "a")
        return again.status_reason if again is not None else "none"

    assert await store.write(changed_first) == "changed"


async def test_leases_deadlines_and_worker_tasks(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent("agent-1"))
    held = dict(status=TaskStatus.RUNNING, worker_id="w1")
    await add_task(store, make_task("t1", lease_expires_at=when(10), deadline_at=when(100), **held))
    await add_task(store, make_task("t2", lease_expires_at=when(20), deadline_at=when(50), **held))
    await add_task(store, make_task("t3", status=TaskStatus.AWAITING_INPUT, worker_id="w2", lease_expires_at=when(5)))
    await add_task(store, make_task("done", status=TaskStatus.COMPLETED, worker_id="", lease_expires_at=when(0)))

    def ids(tasks: list[Task]) -> list[str]:
        return [t.task_id for t in tasks]

    assert await store.read(lambda tx: ids(tx.expired_leases(when(15), 10))) == ["t3", "t1"]
    assert await store.read(lambda tx: ids(tx.expired_leases(when(15), 1))) == ["t3"]
    assert await store.read(lambda tx: ids(tx.overdue_tasks(when(60), 10))) == ["t2"]
    assert await store.read(lambda tx: ids(tx.worker_tasks("w1"))) == ["t1", "t2"]
    # Only the tasks named: one the worker was never told of (t2 here) keeps its old lease.
    assert await store.write(lambda tx: tx.renew_leases("w1", when(1000), ["t1", "t3", "done"])) == 1
    assert await store.read(lambda tx: ids(tx.expired_leases(when(500), 10))) == ["t3", "t2"]
    assert await store.write(lambda tx: tx.renew_leases("w1", when(1000), ["t1", "t2"])) == 2
    assert await store.write(lambda tx: tx.renew_leases("w1", when(1000), [])) == 0
    assert await store.read(lambda tx: ids(tx.expired_leases(when(500), 10))) == ["t3"]


async def test_events_of_type(store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When) -> None:
    await add_agent(store, make_agent("agent-1"))
    await add_task(store, make_task("t1"))
    kinds = [EventType.CREATED, EventType.MESSAGE, EventType.OUTPUT, EventType.MESSAGE]
    for seq, kind in enumerate(kinds, start=1):
        event = TaskEvent("tenant-a", "t1", seq, kind, TaskStatus.QUEUED, when(seq), {"n": seq})
        await store.write(lambda tx, e=event: tx.append_event(e))
    messages = await store.read(lambda tx: tx.events_of_type("tenant-a", "t1", EventType.MESSAGE))
    assert [e.data["n"] for e in messages] == [2, 4]
    assert await store.read(lambda tx: tx.events_of_type("tenant-b", "t1", EventType.MESSAGE)) == []


async def test_task_output_joins_the_output_events_after_a_sequence(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent("agent-1"))
    await add_task(store, make_task("t1"))
    events = [
        (EventType.CREATED, {}),
        (EventType.OUTPUT, {"output": "attempt 1\n"}),
        (EventType.STATUS, {"reason": "LEASE_LOST"}),  # a requeue: the next attempt starts after 3
        (EventType.OUTPUT, {"output": "line 1\n"}),
        (EventType.PROGRESS, {"progress": {"percent": 50.0, "text": ""}}),
        (EventType.OUTPUT, {"output": 'line 2 ✓ "quoted" \\ \u2028'}),
        (EventType.OUTPUT, {"output": ""}),
    ]
    for seq, (kind, data) in enumerate(events, start=1):
        event = TaskEvent("tenant-a", "t1", seq, kind, TaskStatus.RUNNING, when(seq), data)
        await store.write(lambda tx, e=event: tx.append_event(e))
    current = await store.read(lambda tx: tx.task_output("tenant-a", "t1", 3))
    assert current == 'line 1\nline 2 ✓ "quoted" \\ \u2028'
    everything = await store.read(lambda tx: tx.task_output("tenant-a", "t1", 0))
    assert everything == "attempt 1\n" + current
    assert await store.read(lambda tx: tx.task_output("tenant-b", "t1", 0)) == ""
    assert await store.read(lambda tx: tx.task_output("tenant-a", "t1", 7)) == ""


# --- webhook outbox and signing secrets ---


def _delivery(delivery_id: str, tenant: str, due: datetime, task_id: str = "t1", **changes: Any) -> WebhookDelivery:
    values: dict[str, Any] = dict(
        delivery_id=delivery_id,
        tenant=tenant,
        task_id=task_id,
        agent_id="agent-1",
        event_type="task.completed",
        url="https://hooks.example.com/x",
        snapshot={"task_id": task_id, "nested": {"n": [1, 2]}},
        event_time=due,
        created_at=due,
        updated_at=due,
        next_attempt_at=due,
    )
    values.update(changes)
    return WebhookDelivery(**values)


async def test_deliveries_round_trip_and_update(store: Store, when: When) -> None:
    d = _delivery("d1", "tenant-a", when(0))
    await store.write(lambda tx: tx.insert_delivery(d))
    assert await store.read(lambda tx: tx.get_delivery("tenant-a", "d1")) == d
    assert await store.read(lambda tx: tx.get_delivery("tenant-b", "d1")) is None
    done = dataclasses.replace(
        d,
        state=DeliveryState.DELIVERED,
        attempts=2,
        last_status_code=204,
        last_error="",
        next_attempt_at=None,
        delivered_at=when(9),
        last_attempt_at=when(9),
        updated_at=when(9),
    )
    await store.write(lambda tx: tx.update_delivery(done))
    assert await store.read(lambda tx: tx.task_deliveries("tenant-a", "t1")) == [done]
    assert await store.read(lambda tx: tx.task_deliveries("tenant-b", "t1")) == []


async def test_due_deliveries_are_fair_between_tenants(store: Store, when: When) -> None:
    for i in range(10):
        await store.write(lambda tx, i=i: tx.insert_delivery(_delivery(f"a{i}", "tenant-a", when(i))))
    await store.write(lambda tx: tx.insert_delivery(_delivery("b0", "tenant-b", when(50))))
    await store.write(lambda tx: tx.insert_delivery(_delivery("late", "tenant-b", when(500))))
    dead = _delivery("dead", "tenant-b", when(0), state=DeliveryState.DEAD, next_attempt_at=None)
    await store.write(lambda tx: tx.insert_delivery(dead))

    due = await store.read(lambda tx: tx.due_deliveries(when(100), 100, 3))
    assert [d.delivery_id for d in due] == ["a0", "a1", "a2", "b0"]
    assert [d.delivery_id for d in await store.read(lambda tx: tx.due_deliveries(when(100), 2, 3))] == ["a0", "a1"]


async def test_signing_secrets(store: Store, when: When) -> None:
    assert await store.read(lambda tx: tx.get_signing_secret("tenant-a")) is None
    first = SigningSecret("tenant-a", "whsec_one", when(0))
    await store.write(lambda tx: tx.put_signing_secret(first))
    rotated = SigningSecret("tenant-a", "whsec_two", when(10), previous_secret="whsec_one", previous_until=when(100))
    await store.write(lambda tx: tx.put_signing_secret(rotated))
    assert await store.read(lambda tx: tx.get_signing_secret("tenant-a")) == rotated
    assert await store.read(lambda tx: tx.get_signing_secret("tenant-b")) is None
    assert rotated.active(when(50)) == ["whsec_two", "whsec_one"]
    assert rotated.active(when(100)) == ["whsec_two"]


async def test_delete_finished_tasks_takes_only_finished_ones_within_its_limit(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    await add_agent(store, make_agent())
    await add_agent(store, make_agent("agent-2"))
    for status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        task = await add_task(store, make_task(f"{status.value}-1", status=status))
        event = TaskEvent("tenant-a", task.task_id, 1, EventType.CREATED, TaskStatus.QUEUED, when(1))
        await store.write(lambda tx, e=event: tx.append_event(e))
    for status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.AWAITING_INPUT):
        await add_task(store, make_task(f"{status.value}-1", status=status))
    await add_task(store, make_task("other-agent", agent_id="agent-2", status=TaskStatus.COMPLETED))

    # Another tenant's call deletes nothing.
    assert await store.write(lambda tx: tx.delete_finished_tasks("tenant-b", "agent-1", 10)) == 0
    assert await store.write(lambda tx: tx.delete_finished_tasks("tenant-a", "agent-1", 2)) == 2
    assert await store.write(lambda tx: tx.delete_finished_tasks("tenant-a", "agent-1", 10)) == 1
    assert await store.write(lambda tx: tx.delete_finished_tasks("tenant-a", "agent-1", 10)) == 0

    def left(tx: ReadTx) -> list[str]:
        tasks = tx.list_tasks("tenant-a", "agent-1", status=None, before_seq=None, limit=10)
        return sorted(t.task_id for t in tasks)

    assert await store.read(left) == ["awaiting_input-1", "queued-1", "running-1"]
    assert await store.read(lambda tx: tx.events_after("tenant-a", "completed-1", 0, 10)) == []
    assert await store.read(lambda tx: tx.get_task("tenant-a", "other-agent")) is not None


async def test_open_task_counts_and_pending_deliveries_are_store_wide(
    store: Store, make_agent: MakeAgent, make_task: MakeTask, when: When
) -> None:
    """The figures /metrics shows per agent: queued (from the queue counts), running and
    awaiting input, across tenants; finished tasks and delivered or dead deliveries are left out."""
    await add_agent(store, make_agent())
    await add_agent(store, make_agent("agent-2"))
    await add_agent(store, make_agent("agent-3", tenant="tenant-b"))
    statuses = [TaskStatus.QUEUED] * 3 + [TaskStatus.RUNNING, TaskStatus.AWAITING_INPUT, TaskStatus.COMPLETED]
    for i, status in enumerate(statuses):
        await add_task(
            store, make_task(f"a{i}", status=status, worker_id="w" if status is not TaskStatus.QUEUED else "")
        )
    await add_task(store, make_task("b0", agent_id="agent-2", priority=9))
    await add_task(
        store, make_task("c0", agent_id="agent-3", tenant="tenant-b", status=TaskStatus.RUNNING, worker_id="w")
    )
    assert sorted(await store.read(lambda tx: tx.open_task_counts())) == [
        ("tenant-a", "agent-1", "awaiting_input", 1),
        ("tenant-a", "agent-1", "queued", 3),
        ("tenant-a", "agent-1", "running", 1),
        ("tenant-a", "agent-2", "queued", 1),
        ("tenant-b", "agent-3", "running", 1),
    ]

    assert await store.read(lambda tx: tx.pending_delivery_count()) == 0
    for i in range(3):
        await store.write(lambda tx, i=i: tx.insert_delivery(_delivery(f"p{i}", "tenant-a", when(i))))
    await store.write(lambda tx: tx.insert_delivery(_delivery("b", "tenant-b", when(0))))
    dead = _delivery("dead", "tenant-b", when(0), state=DeliveryState.DEAD, next_attempt_at=None)
    await store.write(lambda tx: tx.insert_delivery(dead))
    assert await store.read(lambda tx: tx.pending_delivery_count()) == 4

    # Which endpoints are failing: pending deliveries that failed at least once, by URL.
    assert await store.read(lambda tx: tx.failing_delivery_urls(10)) == []
    failing = {"f0": "https://a.example/hook", "f1": "https://a.example/hook", "f2": "https://b.example/x"}
    for delivery_id, url in failing.items():
        retried = _delivery(delivery_id, "tenant-b", when(0), url=url, attempts=1, last_status_code=500)
        await store.write(lambda tx, d=retried: tx.insert_delivery(d))
    given_up = _delivery("g", "tenant-b", when(0), url="https://c.example", attempts=5, state=DeliveryState.DEAD)
    await store.write(lambda tx: tx.insert_delivery(given_up))
    assert await store.read(lambda tx: tx.failing_delivery_urls(10)) == [
        ("https://a.example/hook", 2),
        ("https://b.example/x", 1),
    ]
    assert await store.read(lambda tx: tx.failing_delivery_urls(1)) == [("https://a.example/hook", 2)]
