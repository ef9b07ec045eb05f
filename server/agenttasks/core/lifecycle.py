"""The task state machine, as pure functions: (task, input) -> (new task, events).

Nothing here touches storage or the clock; callers pass `now`, so every transition is testable
on its own and runs unchanged inside any backend's write transaction. Each change yields events
with the next per-task sequence numbers; the caller stores task and events in one transaction.

    queued -> running -> completed | failed
    queued -> cancelled            running <-> awaiting_input
    running | awaiting_input -> cancelled | failed
    running -> queued   (lease lost with attempts left)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from agenttasks.core.errors import TaskFinished
from agenttasks.core.model import (
    EventType,
    JsonObject,
    Progress,
    Task,
    TaskError,
    TaskEvent,
    TaskMessage,
    TaskResult,
    TaskStatus,
    replace_task,
)

Transition = tuple[Task, list[TaskEvent]]


# Reasons recorded on status events and in Task.status_reason.
CANCELLED_BY_CLIENT = "CANCELLED_BY_CLIENT"
AGENT_DELETED = "AGENT_DELETED"
INPUT_RECEIVED = "INPUT_RECEIVED"
LEASE_LOST = "LEASE_LOST"
TIMEOUT = "TIMEOUT"
INPUT_TIMEOUT = "INPUT_TIMEOUT"
WORKER_ERROR = "WORKER_ERROR"

# What a task no longer has once no worker holds it.
_RELEASED: dict[str, Any] = {"worker_id": "", "lease_expires_at": None, "deadline_at": None, "run_seconds_left": None}

_ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.AWAITING_INPUT, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}
    ),
    # An agent may finish without the input it asked for; a lost lease requeues from here too.
    TaskStatus.AWAITING_INPUT: frozenset(
        {TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_move(src: TaskStatus, dst: TaskStatus) -> bool:
    """Whether the lifecycle allows src -> dst."""
    return dst in _ALLOWED[src]


def _compact(data: dict[str, Any]) -> JsonObject:
    return {k: v for k, v in data.items() if v not in (None, "", {})}


def _emit(task: Task, etype: EventType, now: datetime, data: JsonObject, **changes: Any) -> Transition:
    """The task with `changes` and its next event. One copy per transition: it is the dearest
    step of one, and every task makes several."""
    seq = task.last_sequence + 1
    new = replace_task(task, last_sequence=seq, updated_at=now, **changes)
    event = TaskEvent(
        tenant=task.tenant, task_id=task.task_id, sequence=seq, type=etype, status=new.status, time=now, data=data
    )
    return new, [event]


def _move(task: Task, dst: TaskStatus, now: datetime, *, data: JsonObject | None = None, **changes: Any) -> Transition:
    if not can_move(task.status, dst):  # a bug in the caller, never client input
        raise AssertionError(f"illegal transition {task.status} -> {dst} for task {task.task_id}")
    reason = changes.get("status_reason", task.status_reason)
    return _emit(task, EventType.STATUS, now, _compact({"reason": reason, **(data or {})}), status=dst, **changes)


def created(task: Task) -> Transition:
    """The first event of a new task, which waits for its first attempt."""
    return _emit(task, EventType.CREATED, task.created_at, _compact({"priority": task.priority}), attempt=1)


def cancel(task: Task, now: datetime, reason: str = CANCELLED_BY_CLIENT) -> Transition:
    """Cancel at once. Cancelling a cancelled task changes nothing (idempotent); a completed or
    failed one cannot be cancelled."""
    if task.status is TaskStatus.CANCELLED:
        return task, []
    if task.status.terminal:
        raise TaskFinished(task.task_id, task.status.value, "cancel")
    return _move(task, TaskStatus.CANCELLED, now, status_reason=reason, completed_at=now, input_prompt="", **_RELEASED)


def add_message(task: Task, message: TaskMessage, now: datetime) -> Transition:
    """Record a client message. Answering an agent that awaits input puts the task back to
    running, as a second event, so watchers that follow only status events see it."""
    if task.status.terminal:
        raise TaskFinished(task.task_id, task.status.value, "send a message to")
    payload = {"message_id": message.message_id, "text": message.text}
    task, events = _emit(task, EventType.MESSAGE, now, {"message": payload})
    if task.status is TaskStatus.AWAITING_INPUT:
        # The running-time clock resumes where it stopped when the agent asked.
        left = task.run_seconds_left if task.run_seconds_left is not None else float(task.timeout_seconds)
        task, more = _move(
            task,
            TaskStatus.RUNNING,
            now,
            input_prompt="",
            status_reason=INPUT_RECEIVED,
            deadline_at=now + timedelta(seconds=left),
            run_seconds_left=None,
        )
        events += more
    return task, events


def start(task: Task, now: datetime, *, worker_id: str, lease_until: datetime) -> Transition:
    """A worker took the task: its current attempt runs, leased to that worker, clock running."""
    return _move(
        task,
        TaskStatus.RUNNING,
        now,
        started_at=now,
        status_reason="",
        worker_id=worker_id,
        lease_expires_at=lease_until,
        deadline_at=now + timedelta(seconds=task.timeout_seconds),
        run_seconds_left=None,
        data={"attempt": task.attempt},
    )


def progress(task: Task, value: Progress, now: datetime) -> Transition:
    data = {"progress": {"percent": value.percent, "text": value.text}}
    return _emit(task, EventType.PROGRESS, now, data, progress=value)


def output(task: Task, chunk: str, size: int, now: datetime) -> Transition:
    """Append `chunk` (`size` bytes of UTF-8): an event, and the count on the task. The text
    before it is neither rewritten nor measured again."""
    return _emit(task, EventType.OUTPUT, now, {"output": chunk}, output_bytes=task.output_bytes + size)


def ask_input(task: Task, prompt: str, now: datetime, input_timeout_seconds: int) -> Transition:
    """The agent waits for the client: its running clock stops, the input clock starts."""
    left = (task.deadline_at - now).total_seconds() if task.deadline_at else float(task.timeout_seconds)
    return _move(
        task,
        TaskStatus.AWAITING_INPUT,
        now,
        input_prompt=prompt,
        run_seconds_left=max(0.0, left),
        deadline_at=now + timedelta(seconds=input_timeout_seconds),
        data={"prompt": prompt},
    )


def complete(task: Task, result: TaskResult, now: datetime) -> Transition:
    return _move(
        task,
        TaskStatus.COMPLETED,
        now,
        result=result,
        completed_at=now,
        input_prompt="",
        data={"result": {"text": result.text, "data": result.data}},
        **_RELEASED,
    )


def fail(task: Task, error: TaskError, now: datetime) -> Transition:
    return _move(
        task,
        TaskStatus.FAILED,
        now,
        error=error,
        completed_at=now,
        input_prompt="",
        status_reason=error.code,
        data={"error": {"code": error.code, "message": error.message}},
        **_RELEASED,
    )


def requeue(task: Task, reason: str, now: datetime) -> Transition:
    """Back to the queue after a lost lease, as the next attempt. The task shows the attempt to
    come: the ended one's start, progress and output are not presented as its own (its output
    stays in its output events, which WatchTask replays)."""
    attempt = task.attempt + 1
    return _move(
        task,
        TaskStatus.QUEUED,
        now,
        status_reason=reason,
        input_prompt="",
        progress=None,
        started_at=None,
        output="",
        output_bytes=0,
        output_after=task.last_sequence + 1,  # this event's: the next attempt's output follows it
        attempt=attempt,
        data={"attempt": attempt},
        **_RELEASED,
    )


def lose_lease(task: Task, now: datetime, max_attempts: int) -> Transition:
    """The worker is gone or silent: run again as the next attempt if any is left, else fail."""
    if task.attempt < max_attempts:
        return requeue(task, LEASE_LOST, now)
    message = f"the worker was lost on attempt {task.attempt} of {max_attempts}"
    return fail(task, TaskError(LEASE_LOST, message), now)


def expire(task: Task, now: datetime) -> Transition:
    """The deadline passed: too long running, or too long waiting for input."""
    if task.status is TaskStatus.AWAITING_INPUT:
        return fail(task, TaskError(INPUT_TIMEOUT, "no input arrived in time"), now)
    return fail(task, TaskError(TIMEOUT, f"running time exceeded {task.timeout_seconds} s"), now)
