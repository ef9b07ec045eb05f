"""`ReadTx` and `WriteTx` over one sqlite3 connection, and the row <-> record codecs.

The store opens and ends the transaction around a read or write function; these views only run
the named statements of `sql/sqlite.sql`. A view is detached when its function returns, so a
function that keeps it and uses it later fails loudly instead of writing outside any batch.

Times are stored as INTEGER microseconds since the Unix epoch: exact for every aware datetime
Python can hold, ordered, and subtractable in SQL (run times). JSON is stored compact.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from agenttasks.core.model import (
    Agent,
    AgentStatus,
    ApiKeyRecord,
    CallbackMode,
    DeliveryState,
    EventType,
    IdempotencyRecord,
    JsonObject,
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
    """Microseconds since the epoch. Naive datetimes are refused: their zone is a guess."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _opt_micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _opt_datetime(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def dump_json(value: object) -> str:
    # One encoder for all: json.dumps builds a new one per call when given separators.
    return _COMPACT.encode(value)


def _load_object(text: str) -> JsonObject:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object in the store, found {type(value).__name__}")
    return value


def _agent_params(agent: Agent) -> dict[str, Any]:
    return {
        "tenant": agent.tenant,
        "agent_id": agent.agent_id,
        "name": agent.name,
        "description": agent.description,
        "status": agent.status.value,
        "status_message": agent.status_message,
        "default_timeout_seconds": agent.default_timeout_seconds,
        "max_attempts": agent.max_attempts,
        "input_timeout_seconds": agent.input_timeout_seconds,
        "metadata": dump_json(agent.metadata),
        "created_at": to_micros(agent.created_at),
        "updated_at": to_micros(agent.updated_at),
    }


def _agent(row: sqlite3.Row) -> Agent:
    return Agent(
        tenant=row["tenant"],
        agent_id=row["agent_id"],
        name=row["name"],
        description=row["description"],
        status=AgentStatus(row["status"]),
        status_message=row["status_message"],
        default_timeout_seconds=row["default_timeout_seconds"],
        max_attempts=row["max_attempts"],
        input_timeout_seconds=row["input_timeout_seconds"],
        metadata=_load_object(row["metadata"]),
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
    )


def _task_params(task: Task) -> dict[str, Any]:
    progress = None if task.progress is None else {"percent": task.progress.percent, "text": task.progress.text}
    result = None if task.result is None else {"text": task.result.text, "data": task.result.data}
    error = None if task.error is None else {"code": task.error.code, "message": task.error.message}
    return {
        "tenant": task.tenant,
        "task_id": task.task_id,
        "agent_id": task.agent_id,
        "message": task.message,
        "status": task.status.value,
        "priority": task.priority,
        "metadata": dump_json(task.metadata),
        "callback_mode": task.callback_mode.value,
        "webhook_url": task.webhook_url,
        "timeout_seconds": task.timeout_seconds,
        "created_at": to_micros(task.created_at),
        "updated_at": to_micros(task.updated_at),
        "started_at": _opt_micros(task.started_at),
        "completed_at": _opt_micros(task.completed_at),
        "progress": None if progress is None else dump_json(progress),
        "output_bytes": task.output_bytes,
        "output_after": task.output_after,
        "result": None if result is None else dump_json(result),
        "error": None if error is None else dump_json(error),
        "input_prompt": task.input_prompt,
        "attempt": task.attempt,
        "last_sequence": task.last_sequence,
        "status_reason": task.status_reason,
        "worker_id": task.worker_id,
        "lease_expires_at": _opt_micros(task.lease_expires_at),
        "deadline_at": _opt_micros(task.deadline_at),
        "run_seconds_left": task.run_seconds_left,
    }


def _task(row: sqlite3.Row) -> Task:
    progress = result = error = None
    if row["progress"] is not None:
        raw = _load_object(row["progress"])
        progress = Progress(percent=float(raw["percent"]), text=raw["text"])
    if row["result"] is not None:
        raw = _load_object(row["result"])
        result = TaskResult(text=raw["text"], data=raw["data"])
    if row["error"] is not None:
        raw = _load_object(row["error"])
        error = TaskError(code=raw["code"], message=raw["message"])
    return Task(
        tenant=row["tenant"],
        task_id=row["task_id"],
        agent_id=row["agent_id"],
        message=row["message"],
        status=TaskStatus(row["status"]),
        priority=row["priority"],
        metadata=_load_object(row["metadata"]),
        callback_mode=CallbackMode(row["callback_mode"]),
        webhook_url=row["webhook_url"],
        timeout_seconds=row["timeout_seconds"],
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
        started_at=_opt_datetime(row["started_at"]),
        completed_at=_opt_datetime(row["completed_at"]),
        progress=progress,
        output_bytes=row["output_bytes"],
        output_after=row["output_after"],
        result=result,
        error=error,
        input_prompt=row["input_prompt"],
        attempt=row["attempt"],
        last_sequence=row["last_sequence"],
        status_reason=row["status_reason"],
        worker_id=row["worker_id"],
        lease_expires_at=_opt_datetime(row["lease_expires_at"]),
        deadline_at=_opt_datetime(row["deadline_at"]),
        run_seconds_left=row["run_seconds_left"],
        seq=row["seq"],
    )


def _event(row: sqlite3.Row) -> TaskEvent:
    return TaskEvent(
        tenant=row["tenant"],
        task_id=row["task_id"],
        sequence=row["sequence"],
        type=EventType(row["type"]),
        status=TaskStatus(row["status"]),
        time=from_micros(row["time"]),
        data=_load_object(row["data"]),
    )


def _api_key(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        role=Role(row["role"]),
        secret_hash=row["secret_hash"],
        created_at=from_micros(row["created_at"]),
        revoked_at=_opt_datetime(row["revoked_at"]),
        description=row["description"],
        agent_id=row["agent_id"],
    )


def _idempotency(row: sqlite3.Row) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant=row["tenant"],
        scope=row["scope"],
        key=row["key"],
        request_hash=row["request_hash"],
        response=_load_object(row["response"]),
        created_at=from_micros(row["created_at"]),
        expires_at=from_micros(row["expires_at"]),
    )


def _delivery_params(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": d.delivery_id,
        "tenant": d.tenant,
        "task_id": d.task_id,
        "agent_id": d.agent_id,
        "event_type": d.event_type,
        "url": d.url,
        "snapshot": dump_json(d.snapshot),
        "event_time": to_micros(d.event_time),
        "state": d.state.value,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": to_micros(d.created_at),
        "updated_at": to_micros(d.updated_at),
        "next_attempt_at": _opt_micros(d.next_attempt_at),
        "delivered_at": _opt_micros(d.delivered_at),
        "last_attempt_at": _opt_micros(d.last_attempt_at),
    }


def _delivery(row: sqlite3.Row) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=row["delivery_id"],
        tenant=row["tenant"],
        task_id=row["task_id"],
        agent_id=row["agent_id"],
        event_type=row["event_type"],
        url=row["url"],
        snapshot=_load_object(row["snapshot"]),
        event_time=from_micros(row["event_time"]),
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
        next_attempt_at=_opt_datetime(row["next_attempt_at"]),
        delivered_at=_opt_datetime(row["delivered_at"]),
        last_attempt_at=_opt_datetime(row["last_attempt_at"]),
    )


def _signing_secret(row: sqlite3.Row) -> SigningSecret:
    return SigningSecret(
        tenant=row["tenant"],
        secret=row["secret"],
        created_at=from_micros(row["created_at"]),
        previous_secret=row["previous_secret"],
        previous_until=_opt_datetime(row["previous_until"]),
    )


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
        return None if row is None else _agent(row)

    def list_agents(self, tenant: str, *, after_created: tuple[datetime, str] | None, limit: int) -> list[Agent]:
        after_time, after_id = _NO_AFTER_TIME, ""
        if after_created is not None:
            after_time, after_id = to_micros(after_created[0]), after_created[1]
        params = {"tenant": tenant, "after_created": after_time, "after_id": after_id, "limit": limit}
        return [_agent(row) for row in self._all("list_agents", params)]

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        row = self._one("get_task", {"tenant": tenant, "task_id": task_id})
        return None if row is None else _task(row)

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
        return [_task(row) for row in self._all("list_tasks", params)]

    def unfinished_tasks(self, tenant: str, agent_id: str, limit: int | None = None) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": -1 if limit is None else limit}
        rows = self._all("unfinished_tasks", params)
        return [_task(row) for row in rows]

    def events_after(self, tenant: str, task_id: str, after_sequence: int, limit: int) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence, "limit": limit}
        return [_event(row) for row in self._all("events_after", params)]

    def get_delivery(self, tenant: str, delivery_id: str) -> WebhookDelivery | None:
        rows = self._all("get_delivery", {"tenant": tenant, "delivery_id": delivery_id})
        return _delivery(rows[0]) if rows else None

    def task_deliveries(self, tenant: str, task_id: str) -> list[WebhookDelivery]:
        return [_delivery(row) for row in self._all("task_deliveries", {"tenant": tenant, "task_id": task_id})]

    def due_deliveries(self, now: datetime, limit: int, per_tenant: int) -> list[WebhookDelivery]:
        params = {"now": to_micros(now), "limit": limit, "per_tenant": per_tenant}
        return [_delivery(row) for row in self._all("due_deliveries", params)]

    def get_signing_secret(self, tenant: str) -> SigningSecret | None:
        rows = self._all("get_signing_secret", {"tenant": tenant})
        return _signing_secret(rows[0]) if rows else None

    def events_of_type(self, tenant: str, task_id: str, type: EventType) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "type": type.value}
        return [_event(row) for row in self._all("events_of_type", params)]

    def task_output(self, tenant: str, task_id: str, after_sequence: int) -> str:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence}
        return "".join(row[0] for row in self._all("task_output", params))

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [_task(row) for row in self._all("next_queued", params)]

    def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        return [_task(row) for row in self._all("expired_leases", {"now": to_micros(now), "limit": limit})]

    def overdue_tasks(self, now: datetime, limit: int) -> list[Task]:
        return [_task(row) for row in self._all("overdue_tasks", {"now": to_micros(now), "limit": limit})]

    def worker_tasks(self, worker_id: str) -> list[Task]:
        return [_task(row) for row in self._all("worker_tasks", {"worker_id": worker_id})]

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        params = {"tenant": tenant, "agent_id": agent_id, "priority": priority}
        return int(self._one("queued_at_or_above", params)[0])

    def recent_run_seconds(self, tenant: str, agent_id: str, limit: int) -> float | None:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        micros = self._one("recent_run_seconds", params)[0]
        return None if micros is None else float(micros) / 1_000_000

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one("get_api_key", {"key_id": key_id})
        return None if row is None else _api_key(row)

    def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return [_api_key(row) for row in self._all("list_api_keys", {"tenant": tenant})]

    def get_idempotency(self, tenant: str, scope: str, key: str) -> IdempotencyRecord | None:
        params = {"tenant": tenant, "scope": scope, "key": key, "now": to_micros(utcnow())}
        row = self._one("get_idempotency", params)
        return None if row is None else _idempotency(row)

    def get_meta(self, name: str) -> str | None:
        row = self._one("get_meta", {"name": name})
        return None if row is None else str(row[0])


# Agents as the writer last read or wrote them, by (tenant, agent_id); see SqliteWriteTx.
AgentCache = dict[tuple[str, str], Agent]


class SqliteWriteTx(SqliteReadTx):
    """A write view; the writer runs each write function inside its own SAVEPOINT.

    Every Submit and every dispatch round reads its agent; agents change rarely, so the write
    view answers `get_agent` from the writer's `agents` cache (measured: a quarter of a Submit's
    store time on this machine kind went to reading and decoding the agent row). The cache stays
    exact because every agent write of this process goes through here and drops its entry, and
    the writer clears it when a write function or a batch fails (a rolled-back read could have
    filled it) and when another connection has committed (`PRAGMA data_version`).
    """

    __slots__ = ("_agents",)

    def __init__(self, conn: sqlite3.Connection, agents: AgentCache | None = None) -> None:
        super().__init__(conn)
        self._agents: AgentCache = {} if agents is None else agents

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
        self._execute("insert_agent", _agent_params(agent))

    def update_agent(self, agent: Agent) -> None:
        self._agents.pop((agent.tenant, agent.agent_id), None)
        if self._execute("update_agent", _agent_params(agent)).rowcount != 1:
            raise LookupError(f"no agent {agent.agent_id!r} in tenant {agent.tenant!r} to update")

    def delete_agent(self, tenant: str, agent_id: str) -> None:
        """Deletes the agent with its tasks and events (by cascade). Idempotency records stay
        until they expire: a retry after the deletion still gets its original answer."""
        self._agents.pop((tenant, agent_id), None)
        self._execute("delete_agent", {"tenant": tenant, "agent_id": agent_id})

    def delete_finished_tasks(self, tenant: str, agent_id: str, limit: int) -> int:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return self._execute("delete_finished_tasks", params).rowcount

    def insert_task(self, task: Task) -> Task:
        seq = self._execute("insert_task", _task_params(task)).lastrowid
        if seq is None:  # pragma: no cover - an INSERT into a rowid table always has one
            raise RuntimeError("SQLite assigned no seq to an inserted task")
        return dataclasses.replace(task, seq=seq)

    def update_task(self, task: Task) -> None:
        if self._execute("update_task", _task_params(task)).rowcount != 1:
            raise LookupError(f"no task {task.task_id!r} in tenant {task.tenant!r} to update")

    def insert_delivery(self, delivery: WebhookDelivery) -> None:
        self._execute("insert_delivery", _delivery_params(delivery))

    def update_delivery(self, delivery: WebhookDelivery) -> None:
        if self._execute("update_delivery", _delivery_params(delivery)).rowcount != 1:
            raise LookupError(f"no delivery {delivery.delivery_id!r} in tenant {delivery.tenant!r} to update")

    def put_signing_secret(self, secret: SigningSecret) -> None:
        params = {
            "tenant": secret.tenant,
            "secret": secret.secret,
            "created_at": to_micros(secret.created_at),
            "previous_secret": secret.previous_secret,
            "previous_until": _opt_micros(secret.previous_until),
        }
        self._execute("put_signing_secret", params)

    def renew_leases(self, worker_id: str, until: datetime) -> int:
        return self._execute("renew_leases", {"worker_id": worker_id, "until": to_micros(until)}).rowcount

    def append_event(self, event: TaskEvent) -> None:
        params = {
            "task_id": event.task_id,
            "sequence": event.sequence,
            "tenant": event.tenant,
            "type": event.type.value,
            "status": event.status.value,
            "time": to_micros(event.time),
            "data": dump_json(event.data),
        }
        self._execute("append_event", params)

    def put_idempotency(self, record: IdempotencyRecord) -> None:
        params = {
            "tenant": record.tenant,
            "scope": record.scope,
            "key": record.key,
            "request_hash": record.request_hash,
            "response": dump_json(record.response),
            "created_at": to_micros(record.created_at),
            "expires_at": to_micros(record.expires_at),
        }
        self._execute("put_idempotency", params)

    def purge_idempotency(self, now: datetime, limit: int) -> int:
        return self._execute("purge_idempotency", {"now": to_micros(now), "limit": limit}).rowcount

    def put_api_key(self, record: ApiKeyRecord) -> None:
        params = {
            "key_id": record.key_id,
            "tenant": record.tenant,
            "role": record.role.value,
            "secret_hash": record.secret_hash,
            "created_at": to_micros(record.created_at),
            "revoked_at": _opt_micros(record.revoked_at),
            "description": record.description,
            "agent_id": record.agent_id,
        }
        self._execute("put_api_key", params)

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        return self._execute("revoke_api_key", {"key_id": key_id, "at": to_micros(at)}).rowcount == 1

    def set_meta(self, name: str, value: str) -> None:
        self._execute("set_meta", {"name": name, "value": value})
