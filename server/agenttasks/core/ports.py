"""The storage port: the one protocol every backend (SQLite, PostgreSQL) implements.

The core expresses each operation as a plain function over a transaction view (`ReadTx` or
`WriteTx`) and hands it to `Store.read` or `Store.write`. The backend decides where it runs (the
SQLite backend runs reads on reader threads and write functions in batches on the event loop,
with BEGIN and COMMIT on a thread) and, for writes, runs it inside one transaction: a state
change and its events commit together or not at all. A write function that raises leaves
nothing behind, and the exception reaches the awaiting caller.

Backends may run many write functions in one commit (group commit), so a write function must
only touch the database through its `tx`, must not block on anything else, and should be short:
it may run on the event loop.

All lookups take the tenant: rows of another tenant are invisible, never an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from agenttasks.core.codec import task_to_json
from agenttasks.core.ids import new_id
from agenttasks.core.model import (
    Agent,
    ApiKeyRecord,
    CallbackMode,
    EventType,
    IdempotencyRecord,
    SigningSecret,
    Task,
    TaskEvent,
    TaskStatus,
    WebhookDelivery,
)

T = TypeVar("T")


class ReadTx(Protocol):
    """A consistent read view of the store."""

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None: ...

    def list_agents(self, tenant: str, *, after_created: tuple[datetime, str] | None, limit: int) -> list[Agent]:
        """Agents oldest first, strictly after the (created_at, agent_id) cursor when given."""
        ...

    def get_task(self, tenant: str, task_id: str) -> Task | None: ...

    def list_tasks(
        self, tenant: str, agent_id: str, *, status: TaskStatus | None, before_seq: int | None, limit: int
    ) -> list[Task]:
        """The agent's tasks newest first (by seq), strictly before `before_seq` when given."""
        ...

    def unfinished_tasks(self, tenant: str, agent_id: str, limit: int | None = None) -> list[Task]:
        """The agent's tasks that are not in a terminal status, oldest first (the first `limit`)."""
        ...

    def events_after(self, tenant: str, task_id: str, after_sequence: int, limit: int) -> list[TaskEvent]:
        """The task's events with sequence > after_sequence, in order, at most `limit`."""
        ...

    def events_of_type(self, tenant: str, task_id: str, type: EventType) -> list[TaskEvent]:
        """The task's events of one type, in order (e.g. the client messages)."""
        ...

    def task_output(self, tenant: str, task_id: str, after_sequence: int) -> str:
        """The text of the task's output events after `after_sequence`, joined in order."""
        ...

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        """The agent's queued tasks in dispatch order: highest priority first, FIFO within one.

        Backends shared by several servers must lock the rows they return for the rest of the
        write transaction and skip rows others locked (PostgreSQL: FOR UPDATE SKIP LOCKED)."""
        ...

    def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        """Running or awaiting tasks of any tenant whose lease ended at or before `now`."""
        ...

    def overdue_tasks(self, now: datetime, limit: int) -> list[Task]:
        """Running or awaiting tasks of any tenant whose deadline is at or before `now`."""
        ...

    def worker_tasks(self, worker_id: str) -> list[Task]:
        """The running or awaiting tasks a worker connection holds."""
        ...

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        """How many of the agent's tasks are queued at `priority` or higher. For a task just
        inserted that is itself and every task dispatched before it (FIFO within a priority).
        Its cost must not grow with the backlog: it runs in every Submit."""
        ...

    def queued_in_tenant(self, tenant: str) -> int:
        """How many tasks the tenant has queued, over all its agents, for the cap on queued
        tasks. Its cost grows with the tenant's agents, not with its backlog."""
        ...

    def recent_run_seconds(self, tenant: str, agent_id: str, limit: int) -> float | None:
        """Mean running time of the agent's last `limit` completed tasks, None without history."""
        ...

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]: ...

    def get_idempotency(self, tenant: str, scope: str, key: str) -> IdempotencyRecord | None:
        """The stored answer for a client key, if it has not expired."""
        ...

    def get_meta(self, name: str) -> str | None:
        """A server-wide setting kept in the store (e.g. generated secrets)."""
        ...

    def get_delivery(self, tenant: str, delivery_id: str) -> WebhookDelivery | None: ...

    def task_deliveries(self, tenant: str, task_id: str) -> list[WebhookDelivery]:
        """The task's webhook deliveries, oldest first."""
        ...

    def due_deliveries(self, now: datetime, limit: int, per_tenant: int) -> list[WebhookDelivery]:
        """Pending deliveries due at `now`, earliest first, at most `per_tenant` of each tenant,
        so that one tenant's backlog cannot crowd out the others."""
        ...

    def get_signing_secret(self, tenant: str) -> SigningSecret | None: ...

    def open_task_counts(self) -> list[tuple[str, str, str, int]]:
        """(tenant, agent_id, status, count) of every agent's queued, running and awaiting
        tasks, store-wide (metrics). Reads only unfinished rows, however many finished ones
        the store keeps."""
        ...

    def pending_delivery_count(self) -> int:
        """Webhook deliveries still pending, store-wide (metrics)."""
        ...

    def failing_delivery_urls(self, limit: int) -> list[tuple[str, int]]:
        """(url, count) of pending deliveries that failed at least once, store-wide, the `limit`
        URLs with the most first (metrics: which endpoints are failing)."""
        ...


class WriteTx(ReadTx, Protocol):
    """A read view that can also write; everything done through it commits atomically."""

    def insert_agent(self, agent: Agent) -> None: ...

    def update_agent(self, agent: Agent) -> None: ...

    def delete_agent(self, tenant: str, agent_id: str) -> None:
        """Deletes the agent with its tasks and events. Idempotency records stay until they
        expire, so a retry after the deletion still gets its original answer."""
        ...

    def delete_finished_tasks(self, tenant: str, agent_id: str, limit: int) -> int:
        """Deletes up to `limit` of the agent's finished tasks with their events; returns how
        many. Deleting an agent first clears its history this way, in bounded writes."""
        ...

    def insert_task(self, task: Task) -> Task:
        """Inserts a new task and returns it with its store-assigned `seq`."""
        ...

    def update_task(self, task: Task) -> None:
        """Replaces every mutable column of an existing task."""
        ...

    def prefetch_tasks(self, tenant: str, task_ids: list[str]) -> None:
        """The function is about to read and change these tasks: a store whose every read is a
        round trip may read (and lock) them here in one, and answer `get_task` once for each
        from that read. Doing nothing is right too."""
        ...

    def renew_leases(self, worker_id: str, until: datetime, task_ids: list[str]) -> int:
        """Extends the leases of these tasks, those the worker holds; returns how many.

        Only the tasks its server has told the worker of: a start whose commit the server could
        not confirm (the database went away during COMMIT) may have committed all the same, and
        the worker never heard of it. Renewed with the rest, such a task would run forever on
        paper; left out, its lease runs out and it is queued again."""
        ...

    def append_event(self, event: TaskEvent) -> None:
        """Stores an event; (task_id, sequence) is unique."""
        ...

    def put_idempotency(self, record: IdempotencyRecord) -> None: ...

    def purge_idempotency(self, now: datetime, limit: int) -> int:
        """Deletes up to `limit` expired idempotency records; returns how many. Bounded so that
        one write never holds the writer for long, however many keys expired at once."""
        ...

    def put_api_key(self, record: ApiKeyRecord) -> None: ...

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        """Marks a key revoked; False when there is no such key."""
        ...

    def set_meta(self, name: str, value: str) -> None: ...

    def insert_delivery(self, delivery: WebhookDelivery) -> None: ...

    def update_delivery(self, delivery: WebhookDelivery) -> None: ...

    def put_signing_secret(self, secret: SigningSecret) -> None: ...


class Store(Protocol):
    """An open store. `close` is safe to call twice."""

    async def read(self, fn: Callable[[ReadTx], T]) -> T:
        """Runs fn against a read view off the event loop and returns its result."""
        ...

    async def write(self, fn: Callable[[WriteTx], T]) -> T:
        """Runs fn in a write transaction off the event loop; returns once it is durably committed."""
        ...

    async def close(self) -> None: ...


class Rerunnable(Generic[T]):
    """A write function that may be run a second time, in the same transaction, after the
    statements of its first run were rolled back: whatever it does outside its WriteTx is
    undone or harmless when it runs again. A store may then send its statements without
    waiting for their answers before the next function runs, and, when any of a run of such
    functions failed, roll them all back and run them again one at a time, each settled
    before the next (on PostgreSQL the wait at the end of each function was the writer's
    bound: postgres_writer). Callers see one run: the value (or error) of the last."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[WriteTx], T]) -> None:
        self.fn = fn

    def __call__(self, tx: WriteTx) -> T:
        return self.fn(tx)


# Told of each committed batch of writes: when the batch began and was committed, and when each
# of its writes was queued (time.perf_counter()).
WriteObserver = Callable[[float, float, list[float]], None]


@runtime_checkable
class ObservableWrites(Protocol):
    """A store that tells an observer (metrics) of each committed batch of writes."""

    def observe_writes(self, observer: WriteObserver | None) -> None: ...


@dataclass(frozen=True, slots=True)
class TaskNews:
    """That another server committed events of a task: which ones, and its status after them.
    Small on purpose: it travels in a notification; who cares reads the rest from the store."""

    tenant: str
    agent_id: str
    task_id: str
    first_sequence: int
    last_sequence: int
    status: TaskStatus


class Neighbours(Protocol):
    """What a server does with news of the other servers on its store (`core.replicas`)."""

    def tasks_changed(self, news: list[TaskNews]) -> None:
        """Other servers committed these changes. Called on the event loop; must not block."""
        ...

    def keys_revoked(self, key_ids: list[str]) -> None:
        """Another server or an admin command revoked these API keys."""
        ...

    def may_have_missed(self) -> None:
        """News may have been lost (the feed reconnected): catch up from the store."""
        ...


@runtime_checkable
class SharedStore(Protocol):
    """A store several servers can use at once (PostgreSQL). Every change it commits is also
    announced to the others, so that what a client or worker does through one server reaches
    the watchers and workers connected to another at once, without polling."""

    @property
    def available(self) -> bool:
        """False while the database is out of reach: calls fail at once (StoreUnreachable)
        until it answers again. Health checks show it."""
        ...

    async def follow_others(self, neighbours: Neighbours, stopping: asyncio.Event) -> None:
        """Until `stopping` is set, tell `neighbours` what the other servers commit. Survives a
        lost connection by itself (reconnecting, then calling `may_have_missed`, as it also
        does when the database answers again after being out of reach)."""
        ...


# Statuses a webhook task reports to its webhook_url, and the event types they become.
WEBHOOK_EVENTS = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
    TaskStatus.AWAITING_INPUT: "task.awaiting_input",
}


def save(tx: WriteTx, change: tuple[Task, list[TaskEvent]]) -> tuple[Task, list[TaskEvent]]:
    """Store a lifecycle transition (the task and its new events) in `tx`; a no-op without events.

    Every transition goes through here, so this is also where a webhook task's outbox rows are
    written: in the same transaction as the change, so a crash can lose neither without the other.
    """
    task, events = change
    if events:
        tx.update_task(task)
        for event in events:
            tx.append_event(event)
        if task.callback_mode is CallbackMode.WEBHOOK:
            for event in events:
                if event.type is EventType.STATUS and event.status in WEBHOOK_EVENTS:
                    tx.insert_delivery(outbox_row(with_output(tx, task), event))
    return change


def with_output(tx: ReadTx, task: Task) -> Task:
    """The task with its current attempt's output filled in, to show it to a client. The store
    keeps output only as output events (so an append costs the chunk, not the output so far);
    tasks read for a change leave it empty, and most tasks have none to read."""
    if not task.output_bytes:
        return task
    return replace(task, output=tx.task_output(task.tenant, task.task_id, task.output_after))


def outbox_row(task: Task, event: TaskEvent) -> WebhookDelivery:
    """The delivery that reports `event` of a webhook task to its webhook_url."""
    return WebhookDelivery(
        delivery_id=new_id(),
        tenant=task.tenant,
        task_id=task.task_id,
        agent_id=task.agent_id,
        event_type=WEBHOOK_EVENTS[event.status],
        url=task.webhook_url,
        snapshot=task_to_json(task),
        event_time=event.time,
        created_at=event.time,
        updated_at=event.time,
        next_attempt_at=event.time,
    )


async def in_bounded_writes(step: Callable[[], Awaitable[int]], limit: int) -> int:
    """Repeat `step` (a write that handles at most `limit` rows and says how many) until it
    handles fewer; the total. Work that grows with the data is done this way so that no single
    write holds the writer long, and other writes get their turn in between."""
    total = 0
    while (done := await step()) == limit:
        total += done
    return total + done


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` (a write and what must follow its commit: publishing its events, telling
    workers) to the end even if the caller is cancelled.

    A queued write commits whatever happens to its caller, and gRPC cancels a handler whose
    client gave up (a deadline, a reset stream); without this, the commit would stand but the
    worker would never be told and watchers would never see it.
    """
    task = asyncio.ensure_future(work)
    # Retrieve a late failure, so that a caller who left does not leave it unobserved.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)
