"""`ReadTx` and `WriteTx` over one psycopg connection, and how its columns hold times and JSON.

The store opens and ends the transaction around a read or write function; these views only run
the named statements of `sql/postgresql.sql`. A view is detached when its function returns, so a
function that keeps it and uses it later fails loudly instead of writing outside any batch.

Times travel as aware datetimes (timestamptz; connections run in UTC, so they come back with
`timezone.utc`); naive ones are refused, as the SQLite backend refuses them. JSON columns are
json: written as compact text, read back already decoded by psycopg. The row <-> record
mapping itself is shared with SQLite: `rows.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from agenttasks.core.model import (
    Agent,
    ApiKeyRecord,
    EventType,
    IdempotencyRecord,
    SigningSecret,
    Task,
    TaskEvent,
    TaskStatus,
    WebhookDelivery,
    utcnow,
)
from agenttasks.store.postgres_news import Announcements
from agenttasks.store.rows import Rows, check_object
from agenttasks.store.sql import load_queries

Q = load_queries("postgresql")

Row = Mapping[str, Any]
Connection = psycopg.Connection[dict[str, Any]]

# Larger than any seq, and earlier than any time: stand-ins for "no cursor" that keep each list
# query one index range scan instead of two query shapes.
_NO_BEFORE_SEQ = 2**63 - 1
_NO_AFTER_TIME = datetime.min.replace(tzinfo=UTC)


def _and_event(statement: str) -> str:
    """`statement`, which writes one task row, with the first event of that change in the same
    statement: the event is inserted only if the row was written, so the statement's row count
    is still the task statement's. One statement a change instead of two (PostgresWriteTx)."""
    return (
        f"WITH written AS (\n{statement.strip().removesuffix(';')}\nRETURNING task_id, tenant\n)\n"
        "INSERT INTO task_events (task_id, sequence, tenant, type, status, time, data)\n"
        "SELECT task_id, %(event_sequence)s::bigint, tenant, %(event_type)s::text, %(event_status)s::text,\n"
        "    %(event_time)s::timestamptz, %(event_data)s::json\n"
        "FROM written;"
    )


# Built from the named statements, so they cannot drift apart from them.
WITH_EVENT = {name: _and_event(Q[name]) for name in ("update_task", "insert_task_numbered")}


def _agent_key(key: tuple[str, str]) -> dict[str, Any]:
    return {"tenant": key[0], "agent_id": key[1]}


# A task this transaction has not read or written (BatchCache.tasks).
_UNSEEN = (TaskStatus.QUEUED, -1)


def aware(value: datetime) -> datetime:
    """`value`, checked: a naive datetime's zone would be the session's guess."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    return value


def _as_read(value: datetime) -> datetime:
    # timestamptz comes back aware, in UTC (the connections' time zone): nothing to convert.
    return value


_ROWS = Rows(time_out=aware, time_in=_as_read, object_in=check_object)

# What a write view may run without locking a row or writing: the reads that have no _locked form.
_LOCK_FREE = frozenset(
    {
        "get_agent",
        "list_agents",
        "list_tasks",
        "events_after",
        "events_of_type",
        "task_output",
        "queued_at_or_above",
        "queued_by_priority",
        "queued_in_tenant",
        "recent_run_seconds",
        "get_api_key",
        "list_api_keys",
        "get_idempotency",
        "get_meta",
        "task_deliveries",
        "get_signing_secret",
        "open_task_counts",
        "pending_delivery_count",
        "failing_delivery_urls",
    }
)


class PostgresReadTx:
    """A read view; the store runs each read function in one REPEATABLE READ, READ ONLY
    transaction, so all its queries see one snapshot."""

    __slots__ = ("_conn",)

    # In a write, the statements that read rows about to be changed lock them (see the header of
    # postgresql.sql); a read view runs the plain ones.
    _LOCKING = False

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn

    def detach(self) -> None:
        """Called by the store when the function returns; later use raises."""
        self._conn = None

    def _execute(self, name: str, params: dict[str, Any]) -> psycopg.Cursor[dict[str, Any]]:
        if self._conn is None:
            raise RuntimeError("a store transaction view was used after its function returned")
        return self._conn.execute(Q[name], params)

    def _query(self, name: str) -> str:
        return f"{name}_locked" if self._LOCKING else name

    def _one(self, name: str, params: dict[str, Any]) -> Row | None:
        return self._execute(name, params).fetchone()

    def _all(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._execute(name, params).fetchall()

    def _task(self, row: Row) -> Task:
        return _ROWS.task(row)

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        row = self._one("get_agent", {"tenant": tenant, "agent_id": agent_id})
        return None if row is None else _ROWS.agent(row)

    def list_agents(self, tenant: str, *, after_created: tuple[datetime, str] | None, limit: int) -> list[Agent]:
        after_time, after_id = _NO_AFTER_TIME, ""
        if after_created is not None:
            after_time, after_id = aware(after_created[0]), after_created[1]
        params = {"tenant": tenant, "after_created": after_time, "after_id": after_id, "limit": limit}
        return [_ROWS.agent(row) for row in self._all("list_agents", params)]

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        row = self._one(self._query("get_task"), {"tenant": tenant, "task_id": task_id})
        return None if row is None else self._task(row)

    def list_tasks(
        self, tenant: str, agent_id: str, *, status: TaskStatus | None, before_seq: int | None, limit: int
    ) -> list[Task]:
        params = {
            "tenant": tenant,
            "agent_id": agent_id,
            "status": None if status is None else status.value,
            "before_seq": _NO_BEFORE_SEQ if before_seq is None else before_seq,
            "limit": limit,
        }
        return [self._task(row) for row in self._all("list_tasks", params)]

    def unfinished_tasks(self, tenant: str, agent_id: str, limit: int | None = None) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [self._task(row) for row in self._all(self._query("unfinished_tasks"), params)]

    def events_after(self, tenant: str, task_id: str, after_sequence: int, limit: int) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence, "limit": limit}
        return [_ROWS.event(row) for row in self._all("events_after", params)]

    def events_of_type(self, tenant: str, task_id: str, type: EventType) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "type": type.value}
        return [_ROWS.event(row) for row in self._all("events_of_type", params)]

    def task_output(self, tenant: str, task_id: str, after_sequence: int) -> str:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence}
        row = self._one("task_output", params)
        chunks = None if row is None else row["chunks"]
        return "" if chunks is None else "".join(chunks)

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [self._task(row) for row in self._all(self._query("next_queued"), params)]

    def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        params = {"now": aware(now), "limit": limit}
        return [self._task(row) for row in self._all(self._query("expired_leases"), params)]

    def overdue_tasks(self, now: datetime, limit: int) -> list[Task]:
        params = {"now": aware(now), "limit": limit}
        return [self._task(row) for row in self._all(self._query("overdue_tasks"), params)]

    def worker_tasks(self, worker_id: str) -> list[Task]:
        return [self._task(row) for row in self._all(self._query("worker_tasks"), {"worker_id": worker_id})]

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        row = self._one("queued_at_or_above", {"tenant": tenant, "agent_id": agent_id, "priority": priority})
        return 0 if row is None else int(row["queued"])

    def queued_in_tenant(self, tenant: str) -> int:
        row = self._one("queued_in_tenant", {"tenant": tenant})
        return 0 if row is None else int(row["queued"])

    def recent_run_seconds(self, tenant: str, agent_id: str, limit: int) -> float | None:
        row = self._one("recent_run_seconds", {"tenant": tenant, "agent_id": agent_id, "limit": limit})
        seconds = None if row is None else row["seconds"]
        return None if seconds is None else float(seconds)

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one("get_api_key", {"key_id": key_id})
        return None if row is None else _ROWS.api_key(row)

    def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return [_ROWS.api_key(row) for row in self._all("list_api_keys", {"tenant": tenant})]

    def get_idempotency(self, tenant: str, scope: str, key: str) -> IdempotencyRecord | None:
        params = {"tenant": tenant, "scope": scope, "key": key, "now": utcnow()}
        row = self._one("get_idempotency", params)
        return None if row is None else _ROWS.idempotency(row)

    def get_meta(self, name: str) -> str | None:
        row = self._one("get_meta", {"name": name})
        return None if row is None else str(row["value"])

    def get_delivery(self, tenant: str, delivery_id: str) -> WebhookDelivery | None:
        row = self._one(self._query("get_delivery"), {"tenant": tenant, "delivery_id": delivery_id})
        return None if row is None else _ROWS.delivery(row)

    def task_deliveries(self, tenant: str, task_id: str) -> list[WebhookDelivery]:
        return [_ROWS.delivery(row) for row in self._all("task_deliveries", {"tenant": tenant, "task_id": task_id})]

    def due_deliveries(self, now: datetime, limit: int, per_tenant: int) -> list[WebhookDelivery]:
        params = {"now": aware(now), "limit": limit, "per_tenant": per_tenant}
        return [_ROWS.delivery(row) for row in self._all(self._query("due_deliveries"), params)]

    def get_signing_secret(self, tenant: str) -> SigningSecret | None:
        row = self._one("get_signing_secret", {"tenant": tenant})
        return None if row is None else _ROWS.signing_secret(row)

    def open_task_counts(self) -> list[tuple[str, str, str, int]]:
        rows = self._all("open_task_counts", {})
        return [(row["tenant"], row["agent_id"], row["status"], int(row["n"])) for row in rows]

    def pending_delivery_count(self) -> int:
        row = self._one("pending_delivery_count", {})
        return 0 if row is None else int(row["n"])

    def failing_delivery_urls(self, limit: int) -> list[tuple[str, int]]:
        return [(row["url"], int(row["n"])) for row in self._all("failing_delivery_urls", {"limit": limit})]


@dataclasses.dataclass(slots=True)
class BatchCache:
    """What one transaction of the writer has read, kept true by its own writes and shared by
    the write functions of its batch, so that each need not ask PostgreSQL again. The writer
    clears it when a function fails (a rolled-back read or write may have filled it) and when
    it starts a new transaction."""

    # Agent rows: every Submit and every dispatch round reads its agent.
    agents: dict[tuple[str, str], Agent] = dataclasses.field(default_factory=dict)
    # (tenant, agent_id) -> {priority: tasks queued}: queue_counts as first read in this
    # transaction, plus this transaction's own changes. Every Submit asks how many tasks are
    # queued ahead of its own; one round trip per batch instead of one per Submit.
    queued: dict[tuple[str, str], dict[int, int]] = dataclasses.field(default_factory=dict)
    # (tenant, task_id) -> (status, priority) of every task this transaction read or wrote:
    # what a change to the task does to `queued`. A task not here is changed unseen, and its
    # agent's counts are dropped (read again when next needed).
    tasks: dict[tuple[str, str], tuple[TaskStatus, int]] = dataclasses.field(default_factory=dict)
    # (tenant, agent_id) -> the queue counts asked for with the agent's row and not read yet:
    # a Submit reads both, one round trip instead of two. Dropped unread when a write changes
    # one of the agent's tasks before anything reads them (they would miss that write).
    asked: dict[tuple[str, str], psycopg.Cursor[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def clear(self) -> None:
        self.agents.clear()
        self.queued.clear()
        self.tasks.clear()
        self.asked.clear()


class PostgresWriteTx(PostgresReadTx):
    """A write view; the writer runs each write function in its batch's transaction, inside a
    savepoint of its own when the batch has more than one. It notes what other servers must
    hear of (`news`); the writer announces it with the commit (postgres_news).

    With a `pipeline` (psycopg pipeline mode), a statement whose result the function does not
    need is sent without waiting for its answer: only reads (and counts returned to the caller)
    wait. An UPDATE that must have found its row is checked in `settle`, which the writer calls
    when the function returns, before it counts as done: so a write function's statement that
    fails still fails the function, only later in it. Measured: ~12 round trips per task
    before, each a wait of the writer thread (and a fight for the GIL), one at a time.

    `cache` is the batch's (BatchCache): agent rows and queue counts that a batch's functions
    mostly all read, for the same agent. It lives for one transaction only, and this view's own
    writes keep it true. Within the batch a function sees an agent, or its queue counts, as the
    batch first read them plus the batch's own changes; what another server commits meanwhile
    is seen by the next batch, as an unlocked read in the same transaction would have let it
    commit after the read anyway.
    """

    __slots__ = ("_ahead", "_cache", "_checks", "_held", "_next_seq", "_pipeline", "_release", "_touched", "news")

    _LOCKING = True

    def __init__(
        self,
        conn: Connection,
        pipeline: psycopg.Pipeline | None = None,
        cache: BatchCache | None = None,
        release: Callable[[], None] | None = None,
        next_seq: Callable[[], int] | None = None,
    ) -> None:
        """`release`, if given, commits the functions that ran before this one in its batch;
        `get_task` calls it before it would wait for a row lock while this function has
        locked and written nothing (see PostgresWriter._run_in_transaction). `next_seq`, if
        given, numbers inserted tasks (take_task_seqs), so an insert need not wait for its
        RETURNING."""
        super().__init__(conn)
        self.news = Announcements()
        self._pipeline = pipeline
        self._cache = BatchCache() if cache is None else cache
        self._release = release
        self._next_seq = next_seq
        self._touched = False  # whether a statement that writes or locks has been sent
        # Tasks read (and locked) by `prefetch_tasks`, each handed out once by `get_task`.
        self._ahead: dict[tuple[str, str], Task] = {}
        # (cursor, error) of each UPDATE that must change one row, checked in `settle`.
        self._checks: list[tuple[psycopg.Cursor[dict[str, Any]], str]] = []
        # A task write not sent yet: (statement name, params, error if no row is written). The
        # event that follows it goes in the same statement (WITH_EVENT); anything else sends it
        # first. Each change of a task is a write and an event: three statements less a task.
        self._held: tuple[str, dict[str, Any], str | None] | None = None

    def _execute(self, name: str, params: dict[str, Any]) -> psycopg.Cursor[dict[str, Any]]:
        if self._held is not None:
            self._send_held()
        if name not in _LOCK_FREE:
            self._touched = True
        return super()._execute(name, params)

    def _hold(self, name: str, params: dict[str, Any], error: str | None) -> None:
        """Sends a task write, or, in a pipeline, keeps it for the event that may follow."""
        if self._pipeline is None:
            if error is None:
                self._execute(name, params)
            else:
                self._one_row(name, params, error)
            return
        if self._conn is None:
            raise RuntimeError("a store transaction view was used after its function returned")
        if self._held is not None:
            self._send_held()
        self._touched = True
        self._held = (name, params, error)

    def _send_held(self) -> None:
        if self._held is not None:
            name, params, error = self._held
            self._send(Q[name], params, error)

    def _send(self, query: str, params: dict[str, Any], error: str | None) -> None:
        """Sends the held write, as `query` (its own statement, or the one of WITH_EVENT)."""
        self._held = None
        if self._conn is None:
            raise RuntimeError("a store transaction view was used after its function returned")
        cursor = self._conn.execute(query, params)
        if error is not None:
            self._checks.append((cursor, error))

    def prefetch_tasks(self, tenant: str, task_ids: list[str]) -> None:
        """One round trip for a batch of reports instead of one per report: each report then
        reads its task from here, once (a second read of the same task sees this function's
        own change to it in the store). Like `get_task`, it does not wait for rows another
        transaction holds while this function holds nothing; those are read one by one later."""
        ids = sorted(set(task_ids))
        if len(ids) < 2:
            return
        free = self._release is not None and not self._touched
        rows = self._all("get_tasks_if_free" if free else "get_tasks_locked", {"tenant": tenant, "task_ids": ids})
        self._ahead = {(tenant, row["task_id"]): self._task(row) for row in rows}

    def _task(self, row: Row) -> Task:
        task = _ROWS.task(row)
        self._cache.tasks[(task.tenant, task.task_id)] = (task.status, task.priority)
        return task

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        if self._conn is None:  # a detached view fails even when the cache could answer
            raise RuntimeError("a store transaction view was used after its function returned")
        key = (tenant, agent_id)
        counts = self._cache.queued.get(key)
        if counts is None:
            asked = self._cache.asked.pop(key, None)
            rows = asked.fetchall() if asked is not None else self._all("queued_by_priority", _agent_key(key))
            counts = self._cache.queued[key] = {int(row["priority"]): int(row["queued"]) for row in rows}
        return sum(count for at, count in counts.items() if at >= priority)

    def _wrote_task(self, task: Task, *, inserted: bool) -> None:
        """Keeps the cached queue counts of the task's agent true to this write."""
        cache = self._cache
        if cache.asked:
            cache.asked.pop((task.tenant, task.agent_id), None)
        key = (task.tenant, task.task_id)
        before = None if inserted else cache.tasks.get(key, _UNSEEN)
        cache.tasks[key] = (task.status, task.priority)
        counts = cache.queued.get((task.tenant, task.agent_id))
        if counts is None:
            return
        if before is _UNSEEN:
            del cache.queued[(task.tenant, task.agent_id)]
            return
        if before is not None and before[0] is TaskStatus.QUEUED:
            counts[before[1]] -= 1
        if task.status is TaskStatus.QUEUED:
            counts[task.priority] = counts.get(task.priority, 0) + 1

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        if self._ahead and (task := self._ahead.pop((tenant, task_id), None)) is not None:
            return task
        params = {"tenant": tenant, "task_id": task_id}
        if self._release is not None and not self._touched:
            row = self._one("get_task_if_free", params)
            if row is not None:
                return self._task(row)
            # Locked by another transaction (or no such task): wait holding no other locks.
            self._release()
        row = self._one("get_task_locked", params)
        return None if row is None else self._task(row)

    def defer(self) -> list[tuple[psycopg.Cursor[dict[str, Any]], str]]:
        """Sends what `settle` would wait for, without waiting: returns the checks it would
        make (each UPDATE that must have found its row, with its error), for the writer to
        make once the answers are in (a run of ports.Rerunnable functions)."""
        self._send_held()
        checks, self._checks = self._checks, []
        return checks

    def settle(self) -> None:
        """Waits for every statement sent so far; raises the first failure (a statement's
        error, or LookupError for an UPDATE that found no row)."""
        if self._pipeline is None:
            return
        self._send_held()
        self._pipeline.sync()
        checks, self._checks = self._checks, []
        for cursor, error in checks:
            if cursor.rowcount != 1:
                raise LookupError(error)

    def _one_row(self, name: str, params: dict[str, Any], error: str) -> None:
        """Runs an UPDATE that must change exactly one row, else LookupError(error)."""
        cursor = self._execute(name, params)
        if self._pipeline is not None:
            self._checks.append((cursor, error))
        elif cursor.rowcount != 1:
            raise LookupError(error)

    def _count(self, name: str, params: dict[str, Any]) -> int:
        """Runs a statement and returns how many rows it changed (waiting for it in a pipeline)."""
        cursor = self._execute(name, params)
        if self._pipeline is not None:
            self._pipeline.sync()
        return cursor.rowcount

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        if self._conn is None:  # a detached view fails even when the cache could answer
            raise RuntimeError("a store transaction view was used after its function returned")
        key = (tenant, agent_id)
        agent = self._cache.agents.get(key)
        if agent is None:
            cursor = self._execute("get_agent", _agent_key(key))
            if self._pipeline is not None and key not in self._cache.queued and key not in self._cache.asked:
                self._cache.asked[key] = self._execute("queued_by_priority", _agent_key(key))
            row = cursor.fetchone()
            agent = None if row is None else _ROWS.agent(row)
            if agent is not None:
                self._cache.agents[key] = agent
        return agent

    def insert_agent(self, agent: Agent) -> None:
        self._cache.agents.pop((agent.tenant, agent.agent_id), None)
        self._execute("insert_agent", _ROWS.agent_params(agent))

    def update_agent(self, agent: Agent) -> None:
        self._cache.agents.pop((agent.tenant, agent.agent_id), None)
        error = f"no agent {agent.agent_id!r} in tenant {agent.tenant!r} to update"
        self._one_row("update_agent", _ROWS.agent_params(agent), error)

    def delete_agent(self, tenant: str, agent_id: str) -> None:
        """Deletes the agent with its tasks and events (by cascade). Idempotency records stay
        until they expire: a retry after the deletion still gets its original answer."""
        self._cache.agents.pop((tenant, agent_id), None)
        self._cache.queued.pop((tenant, agent_id), None)
        self._cache.asked.pop((tenant, agent_id), None)
        self._ahead.clear()
        self._execute("delete_agent", {"tenant": tenant, "agent_id": agent_id})

    def delete_finished_tasks(self, tenant: str, agent_id: str, limit: int) -> int:
        self._ahead.clear()
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return self._count("delete_finished_tasks", params)

    def insert_task(self, task: Task) -> Task:
        if self._next_seq is not None:
            seq = self._next_seq()
            self._hold("insert_task_numbered", {**_ROWS.task_params(task), "seq": seq}, None)
            self._wrote_task(task, inserted=True)
            self.news.task(task)
            return dataclasses.replace(task, seq=seq)
        row = self._execute("insert_task", _ROWS.task_params(task)).fetchone()
        if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise RuntimeError("PostgreSQL assigned no seq to an inserted task")
        self._wrote_task(task, inserted=True)
        self.news.task(task)
        return dataclasses.replace(task, seq=row["seq"])

    def update_task(self, task: Task) -> None:
        self._ahead.pop((task.tenant, task.task_id), None)  # read it again: as written now
        error = f"no task {task.task_id!r} in tenant {task.tenant!r} to update"
        self._hold("update_task", _ROWS.task_params(task), error)
        self._wrote_task(task, inserted=False)
        self.news.task(task)

    def renew_leases(self, worker_id: str, until: datetime, task_ids: list[str]) -> int:
        self._ahead.clear()
        return self._count("renew_leases", {"worker_id": worker_id, "until": aware(until), "task_ids": task_ids})

    def append_event(self, event: TaskEvent) -> None:
        params = _ROWS.event_params(event)
        held = self._held
        if held is not None and held[1]["task_id"] == event.task_id and held[1]["tenant"] == event.tenant:
            both = {**held[1], **{f"event_{key}": value for key, value in params.items()}}
            self._send(WITH_EVENT[held[0]], both, held[2])
        else:
            self._execute("append_event", params)
        self.news.event(event)

    def put_idempotency(self, record: IdempotencyRecord) -> None:
        self._execute("put_idempotency", _ROWS.idempotency_params(record))

    def purge_idempotency(self, now: datetime, limit: int) -> int:
        return self._count("purge_idempotency", {"now": aware(now), "limit": limit})

    def put_api_key(self, record: ApiKeyRecord) -> None:
        self._execute("put_api_key", _ROWS.api_key_params(record))

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        if self._count("revoke_api_key", {"key_id": key_id, "at": aware(at)}) != 1:
            return False
        self.news.key_revoked(key_id)
        return True

    def set_meta(self, name: str, value: str) -> None:
        self._execute("set_meta", {"name": name, "value": value})

    def insert_delivery(self, delivery: WebhookDelivery) -> None:
        self._execute("insert_delivery", _ROWS.delivery_params(delivery))

    def update_delivery(self, delivery: WebhookDelivery) -> None:
        error = f"no delivery {delivery.delivery_id!r} in tenant {delivery.tenant!r} to update"
        self._one_row("update_delivery", _ROWS.delivery_params(delivery), error)

    def put_signing_secret(self, secret: SigningSecret) -> None:
        self._execute("put_signing_secret", _ROWS.signing_secret_params(secret))
