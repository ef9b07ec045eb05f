"""Task snapshots round-trip exactly: a webhook built later shows the task as it was."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from agenttasks.core.codec import task_from_json, task_to_json
from agenttasks.core.model import CallbackMode, Progress, Task, TaskError, TaskResult, TaskStatus


def test_every_field_round_trips_through_json_text() -> None:
    at = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    task = Task(
        tenant="t",
        task_id="task",
        agent_id="agent",
        message="m",
        status=TaskStatus.FAILED,
        priority=9,
        metadata={"a": [1, {"b": None}], "c": 1.5},
        callback_mode=CallbackMode.WEBHOOK,
        webhook_url="https://hooks.example.com/x",
        timeout_seconds=60,
        created_at=at,
        updated_at=at + timedelta(seconds=1),
        started_at=at,
        completed_at=at + timedelta(seconds=2),
        progress=Progress(42.5, "half"),
        output="line\n",
        result=TaskResult("r", {"k": "v"}),
        error=TaskError("TIMEOUT", "too slow"),
        input_prompt="",
        attempt=2,
        last_sequence=7,
        status_reason="TIMEOUT",
        seq=11,
        worker_id="w",
        lease_expires_at=at,
        deadline_at=at,
        run_seconds_left=3.5,
    )
    assert task_from_json(json.loads(json.dumps(task_to_json(task)))) == task
    bare = Task(tenant="t", task_id="x", agent_id="a", message="m", created_at=at, updated_at=at)
    assert task_from_json(json.loads(json.dumps(task_to_json(bare)))) == bare
