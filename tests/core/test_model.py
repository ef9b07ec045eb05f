"""replace_task, the hot paths' copy of a Task, gives exactly what dataclasses.replace gives."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from agenttasks.core.model import Progress, Task, TaskStatus, replace_task


def _task() -> Task:
    at = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    return Task(
        tenant="t",
        task_id="task",
        agent_id="agent",
        message="m",
        metadata={"a": 1},
        created_at=at,
        updated_at=at,
        progress=Progress(5.0, "p"),
        seq=3,
        worker_id="w",
    )


def test_replace_task_equals_dataclasses_replace() -> None:
    task = _task()
    changes = {"status": TaskStatus.RUNNING, "last_sequence": 4, "worker_id": "", "lease_expires_at": None}
    copied = replace_task(task, **changes)
    assert copied == dataclasses.replace(task, **changes)
    assert type(copied) is Task
    assert replace_task(task) == task
    assert task.status is TaskStatus.QUEUED  # the original is untouched


def test_replace_task_keeps_the_copy_frozen_and_refuses_unknown_fields() -> None:
    copied = replace_task(_task(), seq=9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.seq = 10  # type: ignore[misc]
    with pytest.raises(TypeError):
        replace_task(_task(), no_such_field=1)
