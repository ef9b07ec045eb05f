"""`ReadTx` and `WriteTx` over one sqlite3 connection, and how its columns hold times and JSON.

The store opens and ends the transaction around a read or write function; these views only run
the named statements of `sql/sqlite.sql`. A view is detached when its function returns, so a
function that keeps it and uses it later fails loudly instead of writing outside any batch.

Times are stored as INTEGER microseconds since the Unix epoch: exact for every aware datetime
Python can hold, ordered, and subtractable in SQL (run times). JSON is stored compact. The
row <-> record mapping itself is shared with PostgreSQL: `rows.py`.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from agenttasks.core.model import (
    Agent,
    ApiKeyRecord,
    EventType,
    IdempotencyRecord,
    JsonObject,
    SigningSecret,
    Task,
    TaskEvent,
    TaskStatus,
    WebhookDelivery,
    replace_task,
    utcnow,
)
from agenttasks.store.rows import Rows, check_object
from agenttasks.store.sql import load_queries

Q = load_queries("sqlite")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Larger than any seq and smaller than any time: stand-ins for "no cursor" that keep each list
# query one index range scan instead of two query shapes.
_NO_BEFORE_SEQ = 2**63 - 1
_NO_AFTER_TIME = -(2**63)
AGENT_CACHE_SIZE = 10_000


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch. Naive datetimes are refused: their zone is a guess.

    Integer arithmetic on the difference's parts: exact, and half the cost of dividing the
    timedelta by a microsecond (~0.4 against ~0.8 us; a task row holds up to seven times)."""
    if value.tzinfo is not UTC and value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _load_object(text: str) -> JsonObject:
    return check_object(json.loads(text))


_ROWS = Rows(time_out=to_micros, time_in=from_micros, object_in=_load_object)


class SqliteReadTx:
    """A read view; the store wraps each read function in one transaction (one snapshot)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    def detach(self) -> None:
        """Called by the store when the function returns; later use raises."""
        self._conn = None

    def _execute(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        return self._connection().execute(Q[name], params)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("a store transaction view was used after its function returned")
        return self._conn

    def _one(self, name: str, params: dict[str, Any]) -> Any:
        return self._execute(name, params).fetchone()

    def _all(self, name: str, params: dict[str, Any]) -> list[Any]:
        return self._execute(name, params).fetchall()

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        row = self._one("get_agent", {"tenant": tenant, "agent_id": agent_id})
        return None if row is None else _ROWS.agent(row)

    def list_agents(self, tenant: str, *, after_created: tuple[datetime, str] | None, limit: int) -> list[Agent]:
        after_time, after_id = _NO_AFTER_TIME, ""
        if after_created is not None:
            after_time, after_id = to_micros(after_created[0]), after_created[1]
        params = {"tenant": tenant, "after_created": after_time, "after_id": after_id, "limit": limit}
        return [_ROWS.agent(row) for row in self._all("list_agents", params)]

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        row = self._one("get_task", {"tenant": tenant, "task_id": task_id})
        return None if row is None else _ROWS.task(row)

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
        return [_ROWS.task(row) for row in self._all("list_tasks", params)]

    def unfinished_tasks(self, tenant: str, agent_id: str, limit: int | None = None) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": -1 if limit is None else limit}
        rows = self._all("unfinished_tasks", params)
        return [_ROWS.task(row) for row in rows]

    def events_after(self, tenant: str, task_id: str, after_sequence: int, limit: int) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence, "limit": limit}
        return [_ROWS.event(row) for row in self._all("events_after", params)]

    def get_delivery(self, tenant: str, delivery_id: str) -> WebhookDelivery | None:
        rows = self._all("get_delivery", {"tenant": tenant, "delivery_id": delivery_id})
        return _ROWS.delivery(rows[0]) if rows else None

    def task_deliveries(self, tenant: str, task_id: str) -> list[WebhookDelivery]:
        return [_ROWS.delivery(row) for row in self._all("task_deliveries", {"tenant": tenant, "task_id": task_id})]

    def due_deliveries(self, now: datetime, limit: int, per_tenant: int) -> list[WebhookDelivery]:
        params = {"now": to_micros(now), "limit": limit, "per_tenant": per_tenant}
        return [_ROWS.delivery(row) for row in self._all("due_deliveries", params)]

    def get_signing_secret(self, tenant: str) -> SigningSecret | None:
        rows = self._all("get_signing_secret", {"tenant": tenant})
        return _ROWS.signing_secret(rows[0]) if rows else None

    def open_task_counts(self) -> list[tuple[str, str, str, int]]:
        return [(row[0], row[1], row[2], int(row[3])) for row in self._all("open_task_counts", {})]

    def pending_delivery_count(self) -> int:
        return int(self._one("pending_delivery_count", {})[0])

    def failing_delivery_urls(self, limit: int) -> list[tuple[str, int]]:
        return [(row[0], int(row[1])) for row in self._all("failing_delivery_urls", {"limit": limit})]

    def events_of_type(self, tenant: str, task_id: str, type: EventType) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "type": type.value}
        return [_ROWS.event(row) for row in self._all("events_of_type", params)]

    def task_output(self, tenant: str, task_id: str, after_sequence: int) -> str:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence}
        return "".join(row[0] for row in self._all("task_output", params))

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [_ROWS.task(row) for row in self._all("next_queued", params)]

    def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        return [_ROWS.task(row) for row in self._all("expired_leases", {"now": to_micros(now), "limit": limit})]

    def overdue_tasks(self, now: datetime, limit: int) -> list[Task]:
        return [_ROWS.task(row) for row in self._all("overdue_tasks", {"now": to_micros(now), "limit": limit})]

    def worker_tasks(self, worker_id: str) -> list[Task]:
        return [_ROWS.task(row) for row in self._all("worker_tasks", {"worker_id": worker_id})]

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        params = {"tenant": tenant, "agent_id": agent_id, "priority": priority}
        return int(self._one("queued_at_or_above", params)[0])

    def queued_in_tenant(self, tenant: str) -> int:
        return int(self._one("queued_in_tenant", {"tenant": tenant})[0])

    def recent_run_seconds(self, tenant: str, agent_id: str, limit: int) -> float | None:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        micros = self._one("recent_run_seconds", params)[0]
        return None if micros is None else float(micros) / 1_000_000

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one("get_api_key", {"key_id": key_id})
        return None if row is None else _ROWS.api_key(row)

    def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return [_ROWS.api_key(row) for row in self._all("list_api_keys", {"tenant": tenant})]

    def get_idempotency(self, tenant: str, scope: str, key: str) -> IdempotencyRecord | None:
        params = {"tenant": tenant, "scope": scope, "key": key, "now": to_micros(utcnow())}
        row = self._one("get_idempotency", params)
        return None if row is None else _ROWS.idempotency(row)

    def get_meta(self, name: str) -> str | None:
        row = self._one("get_meta", {"name": name})
        return None if row is None else str(row[0])


# Agents as the writer last read or wrote them, by (tenant, agent_id); see SqliteWriteTx.
AgentCache = dict[tuple[str, str], Agent]
# Unfinished tasks as the writer last wrote them, by (tenant, task_id); see SqliteWriteTx.
TaskCache = dict[tuple[str, str], Task]
TASK_CACHE_SIZE = 1024
# A task whose texts and JSON take more characters than this is not kept: the cache holds at
# most TASK_CACHE_SIZE tasks of about this size, whatever the clients send.
TASK_CACHE_TEXT = 8 * 1024


class SqliteWriteTx(SqliteReadTx):
    """A write view; the writer runs each write function inside its own SAVEPOINT.

    Every Submit and every dispatch round reads its agent; agents change rarely, so the write
    view answers `get_agent` from the writer's `agents` cache (measured: a quarter of a Submit's
    store time on this machine kind went to reading and decoding the agent row). The cache stays
    exact because every agent write of this process goes through here and drops its entry, and
    the writer clears it when a write function or a batch fails (a rolled-back read could have
    filled it) and when another connection has committed (`PRAGMA data_version`).

    Every report of a worker reads the task it is about, which this writer wrote a moment before
    (the Submit that inserted it, or the write that started it): `get_task` answers unfinished
    tasks from the writer's `tasks` cache the same way (the read and the decoding of a task row
    cost ~27 us of a report's ~80 us of store work). Each task write here puts what it wrote in
    the cache; `update_task` never changes a task's identity (tenant, agent, seq, created_at), and
    the Task it is given was derived from one the store gave, so the cached one is what the row
    would decode to. The other statements that change task rows (lease renewals, deletions)
    clear it, and the writer clears it whenever it clears the agents.
    """

    __slots__ = ("_agents", "_tasks")

    def __init__(
        self, conn: sqlite3.Connection, agents: AgentCache | None = None, tasks: TaskCache | None = None
    ) -> None:
        super().__init__(conn)
        self._agents: AgentCache = {} if agents is None else agents
        self._tasks: TaskCache = {} if tasks is None else tasks

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        self._connection()  # a detached view fails even when the cache could answer
        task = self._tasks.get((tenant, task_id))
        return task if task is not None else super().get_task(tenant, task_id)

    def _remember(self, task: Task, params: dict[str, Any]) -> None:
        """Keep `task`, just written with `params`, for `get_task`, unless it is finished (no
        report reads it again), not as the store would give it back, or large."""
        key = (task.tenant, task.task_id)
        texts = len(params["message"]) + len(params["metadata"]) + len(params["input_prompt"])
        if task.status.terminal or not task.seq or task.output or texts > TASK_CACHE_TEXT:
            self._tasks.pop(key, None)
            return
        if len(self._tasks) >= TASK_CACHE_SIZE and key not in self._tasks:
            self._tasks.clear()  # bounded: start over rather than grow
        self._tasks[key] = task

    def prefetch_tasks(self, tenant: str, task_ids: list[str]) -> None:
        """Nothing to do: a read here costs no round trip, and the writer's cache answers most."""

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        self._connection()  # a detached view fails even when the cache could answer
        key = (tenant, agent_id)
        agent = self._agents.get(key)
        if agent is None:
            agent = super().get_agent(tenant, agent_id)
            if agent is not None:
                if len(self._agents) >= AGENT_CACHE_SIZE:  # bounded: start over rather than grow
                    self._agents.clear()
                self._agents[key] = agent
        return agent

    def insert_agent(self, agent: Agent) -> None:
        self._agents.pop((agent.tenant, agent.agent_id), None)
        self._execute("insert_agent", _ROWS.agent_params(agent))

    def update_agent(self, agent: Agent) -> None:
        self._agents.pop((agent.tenant, agent.agent_id), None)
        if self._execute("update_agent", _ROWS.agent_params(agent)).rowcount != 1:
            raise LookupError(f"no agent {agent.agent_id!r} in tenant {agent.tenant!r} to update")

    def delete_agent(self, tenant: str, agent_id: str) -> None:
        """Deletes the agent with its tasks and events (by cascade). Idempotency records stay
        until they expire: a retry after the deletion still gets its original answer."""
        self._agents.pop((tenant, agent_id), None)
        self._tasks.clear()
        self._execute("delete_agent", {"tenant": tenant, "agent_id": agent_id})

    def delete_finished_tasks(self, tenant: str, agent_id: str, limit: int) -> int:
        self._tasks.clear()
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return self._execute("delete_finished_tasks", params).rowcount

    def insert_task(self, task: Task) -> Task:
        params = _ROWS.task_params(task)
        seq = self._execute("insert_task", params).lastrowid
        if seq is None:  # pragma: no cover - an INSERT into a rowid table always has one
            raise RuntimeError("SQLite assigned no seq to an inserted task")
        task = replace_task(task, seq=seq)
        self._remember(task, params)
        return task

    def update_task(self, task: Task) -> None:
        params = _ROWS.task_params(task)
        if self._execute("update_task", params).rowcount != 1:
            self._tasks.pop((task.tenant, task.task_id), None)
            raise LookupError(f"no task {task.task_id!r} in tenant {task.tenant!r} to update")
        self._remember(task, params)

    def insert_delivery(self, delivery: WebhookDelivery) -> None:
        self._execute("insert_delivery", _ROWS.delivery_params(delivery))

    def update_delivery(self, delivery: WebhookDelivery) -> None:
        if self._execute("update_delivery", _ROWS.delivery_params(delivery)).rowcount != 1:
            raise LookupError(f"no delivery {delivery.delivery_id!r} in tenant {delivery.tenant!r} to update")

    def put_signing_secret(self, secret: SigningSecret) -> None:
        self._execute("put_signing_secret", _ROWS.signing_secret_params(secret))

    def renew_leases(self, worker_id: str, until: datetime, task_ids: list[str]) -> int:
        self._tasks.clear()  # rare (a third of a lease apart per worker): not worth finding them
        params = {"worker_id": worker_id, "until": to_micros(until), "task_ids": json.dumps(task_ids)}
        return self._execute("renew_leases", params).rowcount

    def append_event(self, event: TaskEvent) -> None:
        self._execute("append_event", _ROWS.event_params(event))

    def put_idempotency(self, record: IdempotencyRecord) -> None:
        self._execute("put_idempotency", _ROWS.idempotency_params(record))

    def purge_idempotency(self, now: datetime, limit: int) -> int:
        return self._execute("purge_idempotency", {"now": to_micros(now), "limit": limit}).rowcount

    def put_api_key(self, record: ApiKeyRecord) -> None:
        self._execute("put_api_key", _ROWS.api_key_params(record))

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        return self._execute("revoke_api_key", {"key_id": key_id, "at": to_micros(at)}).rowcount == 1

    def set_meta(self, name: str, value: str) -> None:
        self._execute("set_meta", {"name": name, "value": value})
