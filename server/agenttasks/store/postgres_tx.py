"""`ReadTx` and `WriteTx` over one psycopg connection, and the row <-> record codecs.

The store opens and ends the transaction around a read or write function; these views only run
the named statements of `sql/postgresql.sql`. A view is detached when its function returns, so a
function that keeps it and uses it later fails loudly instead of writing outside any batch.

Times travel as aware datetimes (timestamptz; connections run in UTC, so they come back with
`timezone.utc`); naive ones are refused, as the SQLite backend refuses them. JSON columns are
json: written as compact text, read back already decoded by psycopg.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

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

Q = load_queries("postgresql")

Row = Mapping[str, Any]
Connection = psycopg.Connection[dict[str, Any]]

# Larger than any seq, and earlier than any time: stand-ins for "no cursor" that keep each list
# query one index range scan instead of two query shapes.
_NO_BEFORE_SEQ = 2**63 - 1
_NO_AFTER_TIME = datetime.min.replace(tzinfo=UTC)

_COMPACT = json.JSONEncoder(separators=(",", ":"))


def dump_json(value: object) -> str:
    return _COMPACT.encode(value)


def aware(value: datetime) -> datetime:
    """`value`, checked: a naive datetime's zone would be the session's guess."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    return value


def _opt_aware(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


def _object(value: Any) -> JsonObject:
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
        "created_at": aware(agent.created_at),
        "updated_at": aware(agent.updated_at),
    }


def _agent(row: Row) -> Agent:
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
        metadata=_object(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
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
        "created_at": aware(task.created_at),
        "updated_at": aware(task.updated_at),
        "started_at": _opt_aware(task.started_at),
        "completed_at": _opt_aware(task.completed_at),
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
        "lease_expires_at": _opt_aware(task.lease_expires_at),
        "deadline_at": _opt_aware(task.deadline_at),
        "run_seconds_left": task.run_seconds_left,
    }


def _task(row: Row) -> Task:
    progress = result = error = None
    if row["progress"] is not None:
        raw = _object(row["progress"])
        progress = Progress(percent=float(raw["percent"]), text=raw["text"])
    if row["result"] is not None:
        raw = _object(row["result"])
        result = TaskResult(text=raw["text"], data=raw["data"])
    if row["error"] is not None:
        raw = _object(row["error"])
        error = TaskError(code=raw["code"], message=raw["message"])
    return Task(
        tenant=row["tenant"],
        task_id=row["task_id"],
        agent_id=row["agent_id"],
        message=row["message"],
        status=TaskStatus(row["status"]),
        priority=row["priority"],
        metadata=_object(row["metadata"]),
        callback_mode=CallbackMode(row["callback_mode"]),
        webhook_url=row["webhook_url"],
        timeout_seconds=row["timeout_seconds"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
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
        lease_expires_at=row["lease_expires_at"],
        deadline_at=row["deadline_at"],
        run_seconds_left=row["run_seconds_left"],
        seq=row["seq"],
    )


def _event(row: Row) -> TaskEvent:
    return TaskEvent(
        tenant=row["tenant"],
        task_id=row["task_id"],
        sequence=row["sequence"],
        type=EventType(row["type"]),
        status=TaskStatus(row["status"]),
        time=row["time"],
        data=_object(row["data"]),
    )


def _api_key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        role=Role(row["role"]),
        secret_hash=row["secret_hash"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        description=row["description"],
        agent_id=row["agent_id"],
    )


def _idempotency(row: Row) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant=row["tenant"],
        scope=row["scope"],
        key=row["key"],
        request_hash=row["request_hash"],
        response=_object(row["response"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
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
        "event_time": aware(d.event_time),
        "state": d.state.value,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": aware(d.created_at),
        "updated_at": aware(d.updated_at),
        "next_attempt_at": _opt_aware(d.next_attempt_at),
        "delivered_at": _opt_aware(d.delivered_at),
        "last_attempt_at": _opt_aware(d.last_attempt_at),
    }


def _delivery(row: Row) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=row["delivery_id"],
        tenant=row["tenant"],
        task_id=row["task_id"],
        agent_id=row["agent_id"],
        event_type=row["event_type"],
        url=row["url"],
        snapshot=_object(row["snapshot"]),
        event_time=row["event_time"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
        last_attempt_at=row["last_attempt_at"],
    )


def _signing_secret(row: Row) -> SigningSecret:
    return SigningSecret(
        tenant=row["tenant"],
        secret=row["secret"],
        created_at=row["created_at"],
        previous_secret=row["previous_secret"],
        previous_until=row["previous_until"],
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

    def get_agent(self, tenant: str, agent_id: str) -> Agent | None:
        row = self._one("get_agent", {"tenant": tenant, "agent_id": agent_id})
        return None if row is None else _agent(row)

    def list_agents(self, tenant: str, *, after_created: tuple[datetime, str] | None, limit: int) -> list[Agent]:
        after_time, after_id = _NO_AFTER_TIME, ""
        if after_created is not None:
            after_time, after_id = aware(after_created[0]), after_created[1]
        params = {"tenant": tenant, "after_created": after_time, "after_id": after_id, "limit": limit}
        return [_agent(row) for row in self._all("list_agents", params)]

    def get_task(self, tenant: str, task_id: str) -> Task | None:
        row = self._one(self._query("get_task"), {"tenant": tenant, "task_id": task_id})
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
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [_task(row) for row in self._all(self._query("unfinished_tasks"), params)]

    def events_after(self, tenant: str, task_id: str, after_sequence: int, limit: int) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence, "limit": limit}
        return [_event(row) for row in self._all("events_after", params)]

    def events_of_type(self, tenant: str, task_id: str, type: EventType) -> list[TaskEvent]:
        params = {"tenant": tenant, "task_id": task_id, "type": type.value}
        return [_event(row) for row in self._all("events_of_type", params)]

    def task_output(self, tenant: str, task_id: str, after_sequence: int) -> str:
        params = {"tenant": tenant, "task_id": task_id, "after_sequence": after_sequence}
        row = self._one("task_output", params)
        chunks = None if row is None else row["chunks"]
        return "" if chunks is None else "".join(chunks)

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return [_task(row) for row in self._all(self._query("next_queued"), params)]

    def expired_leases(self, now: datetime, limit: int) -> list[Task]:
        params = {"now": aware(now), "limit": limit}
        return [_task(row) for row in self._all(self._query("expired_leases"), params)]

    def overdue_tasks(self, now: datetime, limit: int) -> list[Task]:
        params = {"now": aware(now), "limit": limit}
        return [_task(row) for row in self._all(self._query("overdue_tasks"), params)]

    def worker_tasks(self, worker_id: str) -> list[Task]:
        return [_task(row) for row in self._all(self._query("worker_tasks"), {"worker_id": worker_id})]

    def queued_at_or_above(self, tenant: str, agent_id: str, priority: int) -> int:
        row = self._one("queued_at_or_above", {"tenant": tenant, "agent_id": agent_id, "priority": priority})
        return 0 if row is None else int(row["queued"])

    def recent_run_seconds(self, tenant: str, agent_id: str, limit: int) -> float | None:
        row = self._one("recent_run_seconds", {"tenant": tenant, "agent_id": agent_id, "limit": limit})
        seconds = None if row is None else row["seconds"]
        return None if seconds is None else float(seconds)

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one("get_api_key", {"key_id": key_id})
        return None if row is None else _api_key(row)

    def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return [_api_key(row) for row in self._all("list_api_keys", {"tenant": tenant})]

    def get_idempotency(self, tenant: str, scope: str, key: str) -> IdempotencyRecord | None:
        params = {"tenant": tenant, "scope": scope, "key": key, "now": utcnow()}
        row = self._one("get_idempotency", params)
        return None if row is None else _idempotency(row)

    def get_meta(self, name: str) -> str | None:
        row = self._one("get_meta", {"name": name})
        return None if row is None else str(row["value"])

    def get_delivery(self, tenant: str, delivery_id: str) -> WebhookDelivery | None:
        row = self._one(self._query("get_delivery"), {"tenant": tenant, "delivery_id": delivery_id})
        return None if row is None else _delivery(row)

    def task_deliveries(self, tenant: str, task_id: str) -> list[WebhookDelivery]:
        return [_delivery(row) for row in self._all("task_deliveries", {"tenant": tenant, "task_id": task_id})]

    def due_deliveries(self, now: datetime, limit: int, per_tenant: int) -> list[WebhookDelivery]:
        params = {"now": aware(now), "limit": limit, "per_tenant": per_tenant}
        return [_delivery(row) for row in self._all(self._query("due_deliveries"), params)]

    def get_signing_secret(self, tenant: str) -> SigningSecret | None:
        row = self._one("get_signing_secret", {"tenant": tenant})
        return None if row is None else _signing_secret(row)


class PostgresWriteTx(PostgresReadTx):
    """A write view; the writer runs each write function in its batch's transaction, inside a
    savepoint of its own when the batch has more than one."""

    __slots__ = ()

    _LOCKING = True

    def insert_agent(self, agent: Agent) -> None:
        self._execute("insert_agent", _agent_params(agent))

    def update_agent(self, agent: Agent) -> None:
        if self._execute("update_agent", _agent_params(agent)).rowcount != 1:
            raise LookupError(f"no agent {agent.agent_id!r} in tenant {agent.tenant!r} to update")

    def delete_agent(self, tenant: str, agent_id: str) -> None:
        """Deletes the agent with its tasks and events (by cascade). Idempotency records stay
        until they expire: a retry after the deletion still gets its original answer."""
        self._execute("delete_agent", {"tenant": tenant, "agent_id": agent_id})

    def delete_finished_tasks(self, tenant: str, agent_id: str, limit: int) -> int:
        params = {"tenant": tenant, "agent_id": agent_id, "limit": limit}
        return self._execute("delete_finished_tasks", params).rowcount

    def insert_task(self, task: Task) -> Task:
        row = self._execute("insert_task", _task_params(task)).fetchone()
        if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
            raise RuntimeError("PostgreSQL assigned no seq to an inserted task")
        return dataclasses.replace(task, seq=row["seq"])

    def update_task(self, task: Task) -> None:
        if self._execute("update_task", _task_params(task)).rowcount != 1:
            raise LookupError(f"no task {task.task_id!r} in tenant {task.tenant!r} to update")

    def renew_leases(self, worker_id: str, until: datetime) -> int:
        return self._execute("renew_leases", {"worker_id": worker_id, "until": aware(until)}).rowcount

    def append_event(self, event: TaskEvent) -> None:
        params = {
            "task_id": event.task_id,
            "sequence": event.sequence,
            "tenant": event.tenant,
            "type": event.type.value,
            "status": event.status.value,
            "time": aware(event.time),
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
            "created_at": aware(record.created_at),
            "expires_at": aware(record.expires_at),
        }
        self._execute("put_idempotency", params)

    def purge_idempotency(self, now: datetime, limit: int) -> int:
        return self._execute("purge_idempotency", {"now": aware(now), "limit": limit}).rowcount

    def put_api_key(self, record: ApiKeyRecord) -> None:
        params = {
            "key_id": record.key_id,
            "tenant": record.tenant,
            "role": record.role.value,
            "secret_hash": record.secret_hash,
            "created_at": aware(record.created_at),
            "revoked_at": _opt_aware(record.revoked_at),
            "description": record.description,
            "agent_id": record.agent_id,
        }
        self._execute("put_api_key", params)

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        return self._execute("revoke_api_key", {"key_id": key_id, "at": aware(at)}).rowcount == 1

    def set_meta(self, name: str, value: str) -> None:
        self._execute("set_meta", {"name": name, "value": value})

    def insert_delivery(self, delivery: WebhookDelivery) -> None:
        self._execute("insert_delivery", _delivery_params(delivery))

    def update_delivery(self, delivery: WebhookDelivery) -> None:
        if self._execute("update_delivery", _delivery_params(delivery)).rowcount != 1:
            raise LookupError(f"no delivery {delivery.delivery_id!r} in tenant {delivery.tenant!r} to update")

    def put_signing_secret(self, secret: SigningSecret) -> None:
        params = {
            "tenant": secret.tenant,
            "secret": secret.secret,
            "created_at": aware(secret.created_at),
            "previous_secret": secret.previous_secret,
            "previous_until": _opt_aware(secret.previous_until),
        }
        self._execute("put_signing_secret", params)
