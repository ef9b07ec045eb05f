"""A task as plain JSON and back, exactly: for snapshots kept beside the task (webhook outbox).

The REST/gRPC shape is the transport's business; this form only has to round-trip every field,
so a delivery built later from a snapshot shows the task as it was at the event.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from agenttasks.core.model import CallbackMode, JsonObject, Progress, Task, TaskError, TaskResult, TaskStatus

_TIMES = ("created_at", "updated_at", "started_at", "completed_at", "lease_expires_at", "deadline_at")
_NESTED: dict[str, type[Any]] = {"progress": Progress, "result": TaskResult, "error": TaskError}


def task_to_json(task: Task) -> JsonObject:
    data: JsonObject = {}
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, TaskStatus | CallbackMode):
            value = value.value
        data[f.name] = value
    return data


def task_from_json(data: JsonObject) -> Task:
    values = dict(data)
    for name in _TIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    for name, cls in _NESTED.items():
        if values.get(name) is not None:
            values[name] = cls(**values[name])
    values["status"] = TaskStatus(values["status"])
    values["callback_mode"] = CallbackMode(values["callback_mode"])
    return Task(**values)
