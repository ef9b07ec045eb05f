"""Domain records to protobuf messages and back. No logic beyond the shape of the wire."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from agenttasks.core.errors import InvalidArgument, Why
from agenttasks.core.model import Agent, JsonObject, Task, TaskEvent, WebhookDelivery, utcnow
from agenttasks.core.tasks import MessageResult, SubmitInput, SubmitResult
from agenttasks.core.watch import Snapshot, StreamEnd, WatchItem
from agenttasks.v1 import agent_pb2, task_pb2, task_service_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """The same Timestamp as `FromDatetime`, by integer arithmetic: 1.6 us instead of 4, and a
    task carries up to seven of them on every answer, assignment and watch event."""
    if value is None:
        return None
    if value.tzinfo is None:  # not made by this server, which keeps aware UTC times only
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(value)
        return ts
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def struct(value: JsonObject | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def struct_to_dict(message: Any, field: str) -> JsonObject | None:
    """A Struct field of a request as a dict, or None when the client did not set it."""
    if not message.HasField(field):
        return None
    try:
        result: JsonObject = json_format.MessageToDict(getattr(message, field))
    except ValueError:  # NaN or Infinity: not JSON, so not storable or renderable
        raise InvalidArgument.field(field, "numbers must be finite (no NaN or Infinity)", Why.BAD_FORMAT) from None
    return result


def optional(message: Any, field: str) -> Any:
    """An `optional` scalar field, or None when the client did not set it."""
    return getattr(message, field) if message.HasField(field) else None


def delivery(d: WebhookDelivery) -> task_pb2.WebhookDelivery:
    return task_pb2.WebhookDelivery(
        delivery_id=d.delivery_id,
        event_type=d.event_type,
        state=d.state.value,
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=timestamp(d.created_at),
        next_attempt_at=timestamp(d.next_attempt_at),
        delivered_at=timestamp(d.delivered_at),
        last_attempt_at=timestamp(d.last_attempt_at),
    )


def task(t: Task, deliveries: Sequence[WebhookDelivery] = ()) -> task_pb2.Task:
    return task_pb2.Task(
        task_id=t.task_id,
        agent_id=t.agent_id,
        status=t.status.value,
        message=t.message,
        priority=t.priority,
        metadata=struct(t.metadata),
        callback_mode=t.callback_mode.value,
        webhook_url=t.webhook_url,
        timeout_seconds=t.timeout_seconds,
        created_at=timestamp(t.created_at),
        updated_at=timestamp(t.updated_at),
        started_at=timestamp(t.started_at),
        completed_at=timestamp(t.completed_at),
        progress=task_pb2.Progress(percent=t.progress.percent, text=t.progress.text) if t.progress else None,
        output=t.output,
        result=task_pb2.TaskResult(text=t.result.text, data=struct(t.result.data)) if t.result else None,
        error=task_pb2.TaskError(code=t.error.code, message=t.error.message) if t.error else None,
        input_prompt=t.input_prompt,
        attempt=t.attempt,
        last_sequence=t.last_sequence,
        status_reason=t.status_reason,
        webhook_deliveries=[delivery(d) for d in deliveries],
    )


def agent(a: Agent) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        agent_id=a.agent_id,
        name=a.name,
        description=a.description,
        status=a.status.value,
        status_message=a.status_message,
        default_timeout_seconds=a.default_timeout_seconds,
        max_attempts=a.max_attempts,
        input_timeout_seconds=a.input_timeout_seconds,
        metadata=struct(a.metadata),
        created_at=timestamp(a.created_at),
        updated_at=timestamp(a.updated_at),
    )


def submit_input(request: task_service_pb2.SubmitRequest, request_id: str) -> SubmitInput:
    """A Submit request as the core takes it; unset optional fields stay None."""
    return SubmitInput(
        message=request.message,
        priority=optional(request, "priority"),
        timeout_override=optional(request, "timeout_override"),
        metadata=struct_to_dict(request, "metadata"),
        callback_mode=request.callback_mode,
        webhook_url=request.webhook_url,
        request_id=request_id,
    )


def submit_response(r: SubmitResult) -> task_service_pb2.SubmitResponse:
    return task_service_pb2.SubmitResponse(
        task_id=r.task_id,
        agent_id=r.agent_id,
        status=r.status.value,
        created_at=timestamp(r.created_at),
        estimated_start=timestamp(r.estimated_start),
        poll_url=r.poll_url,
        cancel_url=r.cancel_url,
    )


def message_response(r: MessageResult) -> task_service_pb2.SendMessageResponse:
    return task_service_pb2.SendMessageResponse(
        task_id=r.task_id, message_id=r.message_id, status=r.status.value, created_at=timestamp(r.created_at)
    )


def _event(e: TaskEvent) -> task_service_pb2.WatchTaskResponse:
    data = e.data
    out = task_service_pb2.WatchTaskResponse(
        sequence=e.sequence,
        type=e.type.value,
        task_id=e.task_id,
        status=e.status.value,
        time=timestamp(e.time),
        output=data.get("output", ""),
        prompt=data.get("prompt", ""),
        reason=data.get("reason", ""),
        attempt=int(data.get("attempt", 0)),
    )
    if (p := data.get("progress")) is not None:
        out.progress.CopyFrom(task_pb2.Progress(percent=p["percent"], text=p.get("text", "")))
    if (m := data.get("message")) is not None:
        out.message.CopyFrom(task_pb2.TaskMessage(message_id=m["message_id"], text=m["text"], created_at=out.time))
    if (r := data.get("result")) is not None:
        out.result.CopyFrom(task_pb2.TaskResult(text=r.get("text", ""), data=struct(r.get("data"))))
    if (err := data.get("error")) is not None:
        out.error.CopyFrom(task_pb2.TaskError(code=err["code"], message=err.get("message", "")))
    return out


# The last events converted, by identity: an event published to its task's watchers is one
# object shared by all of them, so it is converted once instead of once per stream (~9 us each on
# this machine kind, 90 ms per event at 10,000 watchers). The messages are shared, so nothing may
# change them after this.
_CONVERTED_EVENTS = 1024
_converted: collections.OrderedDict[int, tuple[TaskEvent, task_service_pb2.WatchTaskResponse]] = (
    collections.OrderedDict()
)


def _shared_event(e: TaskEvent) -> task_service_pb2.WatchTaskResponse:
    hit = _converted.get(id(e))
    if hit is not None and hit[0] is e:  # the event itself is kept, so its id cannot be reused
        return hit[1]
    message = _converted[id(e)] = (e, _event(e))
    if len(_converted) > _CONVERTED_EVENTS:
        _converted.popitem(last=False)
    return message[1]


def watch_item(item: WatchItem) -> task_service_pb2.WatchTaskResponse:
    if isinstance(item, Snapshot):
        t = item.task
        return task_service_pb2.WatchTaskResponse(
            sequence=t.last_sequence,
            type="snapshot",
            task_id=t.task_id,
            status=t.status.value,
            time=timestamp(t.updated_at),
            task=task(t),
        )
    if isinstance(item, StreamEnd):
        return task_service_pb2.WatchTaskResponse(
            sequence=item.last_sequence,
            type="end",
            task_id=item.task_id,
            status=item.status.value,
            reason=item.reason,
            time=timestamp(utcnow()),
        )
    return _shared_event(item)
