"""The mapping between the model's records and the stores' rows, written once for every backend.

Both backends have the same tables and columns; they differ only in how a column holds a time
or a JSON object, the three functions each backend gives `Rows`: SQLite keeps times as INTEGER
microseconds and JSON as TEXT it must parse; PostgreSQL keeps times as timestamptz (aware
datetimes both ways) and JSON as json, which psycopg hands back already decoded. JSON is written
the same way on both, as compact text (a json column takes it as it is, \\u0000 escapes and all).
The SQL stays in each backend's `sql/*.sql`.

A report or a Submit encodes and decodes a task row each time, so these stay plain code: the
backend's functions are bound once, and NULL checks are written inline rather than through a
helper (measured: the extra calls made decoding a PostgreSQL task row ~9% slower).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

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
)

_COMPACT = json.JSONEncoder(separators=(",", ":"))
# Enum members by stored value: a dict lookup costs a twentieth of calling the Enum class (~0.03
# against ~0.65 us), and a task row has three of them. An unknown value still goes through the
# class, which raises ValueError as before.
_STATUSES = {status.value: status for status in TaskStatus}
_CALLBACK_MODES = {mode.value: mode for mode in CallbackMode}
_EVENT_TYPES = {etype.value: etype for etype in EventType}


def dump_json(value: object) -> str:
    # One encoder for all: json.dumps builds a new one per call when given separators.
    return _COMPACT.encode(value)


def check_object(value: Any) -> JsonObject:
    """`value` if it is a JSON object: a column that should hold one holds something else only
    when the database was changed behind the store's back, and that must not pass silently."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object in the store, found {type(value).__name__}")
    return value


class Row(Protocol):
    """A row read by name: sqlite3.Row, or the dict psycopg's dict_row gives."""

    def __getitem__(self, key: str, /) -> Any: ...


class Rows:
    """Named parameters for each write and a record for each row read, for one backend.

    `time_out` turns an aware datetime into the column's value and raises ValueError for a naive
    one (its zone would be a guess); `time_in` turns a time column's value back into an aware
    datetime; `object_in` turns a JSON column's value into the object it holds, or raises. The
    last two are never given NULL.
    """

    __slots__ = ("_object_in", "_time_in", "_time_out")

    def __init__(
        self,
        *,
        time_out: Callable[[datetime], Any],
        time_in: Callable[[Any], datetime],
        object_in: Callable[[Any], JsonObject],
    ) -> None:
        self._time_out = time_out
        self._time_in = time_in
        self._object_in = object_in

    def agent_params(self, agent: Agent) -> dict[str, Any]:
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
            "created_at": self._time_out(agent.created_at),
            "updated_at": self._time_out(agent.updated_at),
        }

    def agent(self, row: Row) -> Agent:
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
            metadata=self._object_in(row["metadata"]),
            created_at=self._time_in(row["created_at"]),
            updated_at=self._time_in(row["updated_at"]),
        )

    def task_params(self, task: Task) -> dict[str, Any]:
        time_out = self._time_out
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
            "created_at": time_out(task.created_at),
            "updated_at": time_out(task.updated_at),
            "started_at": None if task.started_at is None else time_out(task.started_at),
            "completed_at": None if task.completed_at is None else time_out(task.completed_at),
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
            "lease_expires_at": None if task.lease_expires_at is None else time_out(task.lease_expires_at),
            "deadline_at": None if task.deadline_at is None else time_out(task.deadline_at),
            "run_seconds_left": task.run_seconds_left,
            "traceparent": task.traceparent,
            "tracestate": task.tracestate,
        }

    def task(self, row: Row) -> Task:
        time_in = self._time_in
        object_in = self._object_in
        progress = result = error = None
        if (raw := row["progress"]) is not None:
            raw = object_in(raw)
            progress = Progress(percent=float(raw["percent"]), text=raw["text"])
        if (raw := row["result"]) is not None:
            raw = object_in(raw)
            result = TaskResult(text=raw["text"], data=raw["data"])
        if (raw := row["error"]) is not None:
            raw = object_in(raw)
            error = TaskError(code=raw["code"], message=raw["message"])
        return Task(
            tenant=row["tenant"],
            task_id=row["task_id"],
            agent_id=row["agent_id"],
            message=row["message"],
            status=_STATUSES.get(row["status"]) or TaskStatus(row["status"]),
            priority=row["priority"],
            metadata=object_in(row["metadata"]),
            callback_mode=_CALLBACK_MODES.get(row["callback_mode"]) or CallbackMode(row["callback_mode"]),
            webhook_url=row["webhook_url"],
            timeout_seconds=row["timeout_seconds"],
            created_at=time_in(row["created_at"]),
            updated_at=time_in(row["updated_at"]),
            started_at=None if (at := row["started_at"]) is None else time_in(at),
            completed_at=None if (at := row["completed_at"]) is None else time_in(at),
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
            lease_expires_at=None if (at := row["lease_expires_at"]) is None else time_in(at),
            deadline_at=None if (at := row["deadline_at"]) is None else time_in(at),
            run_seconds_left=row["run_seconds_left"],
            traceparent=row["traceparent"],
            tracestate=row["tracestate"],
            seq=row["seq"],
        )

    def event_params(self, event: TaskEvent) -> dict[str, Any]:
        return {
            "task_id": event.task_id,
            "sequence": event.sequence,
            "tenant": event.tenant,
            "type": event.type.value,
            "status": event.status.value,
            "time": self._time_out(event.time),
            "data": dump_json(event.data),
        }

    def event(self, row: Row) -> TaskEvent:
        return TaskEvent(
            tenant=row["tenant"],
            task_id=row["task_id"],
            sequence=row["sequence"],
            type=_EVENT_TYPES.get(row["type"]) or EventType(row["type"]),
            status=_STATUSES.get(row["status"]) or TaskStatus(row["status"]),
            time=self._time_in(row["time"]),
            data=self._object_in(row["data"]),
        )

    def api_key_params(self, record: ApiKeyRecord) -> dict[str, Any]:
        return {
            "key_id": record.key_id,
            "tenant": record.tenant,
            "role": record.role.value,
            "secret_hash": record.secret_hash,
            "created_at": self._time_out(record.created_at),
            "revoked_at": None if record.revoked_at is None else self._time_out(record.revoked_at),
            "description": record.description,
            "agent_id": record.agent_id,
        }

    def api_key(self, row: Row) -> ApiKeyRecord:
        return ApiKeyRecord(
            key_id=row["key_id"],
            tenant=row["tenant"],
            role=Role(row["role"]),
            secret_hash=row["secret_hash"],
            created_at=self._time_in(row["created_at"]),
            revoked_at=None if (at := row["revoked_at"]) is None else self._time_in(at),
            description=row["description"],
            agent_id=row["agent_id"],
        )

    def idempotency_params(self, record: IdempotencyRecord) -> dict[str, Any]:
        return {
            "tenant": record.tenant,
            "scope": record.scope,
            "key": record.key,
            "request_hash": record.request_hash,
            "response": dump_json(record.response),
            "created_at": self._time_out(record.created_at),
            "expires_at": self._time_out(record.expires_at),
        }

    def idempotency(self, row: Row) -> IdempotencyRecord:
        return IdempotencyRecord(
            tenant=row["tenant"],
            scope=row["scope"],
            key=row["key"],
            request_hash=row["request_hash"],
            response=self._object_in(row["response"]),
            created_at=self._time_in(row["created_at"]),
            expires_at=self._time_in(row["expires_at"]),
        )

    def delivery_params(self, d: WebhookDelivery) -> dict[str, Any]:
        time_out = self._time_out
        return {
            "delivery_id": d.delivery_id,
            "tenant": d.tenant,
            "task_id": d.task_id,
            "agent_id": d.agent_id,
            "event_type": d.event_type,
            "url": d.url,
            "snapshot": dump_json(d.snapshot),
            "event_time": time_out(d.event_time),
            "state": d.state.value,
            "attempts": d.attempts,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "created_at": time_out(d.created_at),
            "updated_at": time_out(d.updated_at),
            "next_attempt_at": None if d.next_attempt_at is None else time_out(d.next_attempt_at),
            "delivered_at": None if d.delivered_at is None else time_out(d.delivered_at),
            "last_attempt_at": None if d.last_attempt_at is None else time_out(d.last_attempt_at),
        }

    def delivery(self, row: Row) -> WebhookDelivery:
        time_in = self._time_in
        return WebhookDelivery(
            delivery_id=row["delivery_id"],
            tenant=row["tenant"],
            task_id=row["task_id"],
            agent_id=row["agent_id"],
            event_type=row["event_type"],
            url=row["url"],
            snapshot=self._object_in(row["snapshot"]),
            event_time=time_in(row["event_time"]),
            state=DeliveryState(row["state"]),
            attempts=row["attempts"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            created_at=time_in(row["created_at"]),
            updated_at=time_in(row["updated_at"]),
            next_attempt_at=None if (at := row["next_attempt_at"]) is None else time_in(at),
            delivered_at=None if (at := row["delivered_at"]) is None else time_in(at),
            last_attempt_at=None if (at := row["last_attempt_at"]) is None else time_in(at),
        )

    def signing_secret_params(self, secret: SigningSecret) -> dict[str, Any]:
        return {
            "tenant": secret.tenant,
            "secret": secret.secret,
            "created_at": self._time_out(secret.created_at),
            "previous_secret": secret.previous_secret,
            "previous_until": None if secret.previous_until is None else self._time_out(secret.previous_until),
        }

    def signing_secret(self, row: Row) -> SigningSecret:
        return SigningSecret(
            tenant=row["tenant"],
            secret=row["secret"],
            created_at=self._time_in(row["created_at"]),
            previous_secret=row["previous_secret"],
            previous_until=None if (at := row["previous_until"]) is None else self._time_in(at),
        )
