"""The task lifecycle as a state machine: any sequence of operations keeps its invariants.

Hypothesis drives random sequences of every transition (including illegal ones, which must be
refused without changing anything) against the pure functions of `core.lifecycle`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agenttasks.core import lifecycle
from agenttasks.core.errors import TaskFinished
from agenttasks.core.model import EventType, Progress, Task, TaskError, TaskMessage, TaskResult, TaskStatus

HELD = (TaskStatus.RUNNING, TaskStatus.AWAITING_INPUT)


class TaskLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.max_attempts = 3
        task = Task(tenant="t", task_id="task", agent_id="agent", message="m", timeout_seconds=100, created_at=self.now)
        self.task, self.events = lifecycle.created(task)
        self.was_terminal = False

    def apply(self, change: lifecycle.Transition) -> None:
        task, events = change
        assert [e.sequence for e in events] == list(
            range(self.task.last_sequence + 1, self.task.last_sequence + 1 + len(events))
        )
        if events:
            assert events[-1].status is task.status
        self.task, self.events = task, self.events + events

    @rule(seconds=st.floats(min_value=0, max_value=50))
    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: self.task.status is TaskStatus.QUEUED)
    @rule()
    def start(self) -> None:
        before = self.task.attempt
        self.apply(lifecycle.start(self.task, self.now, worker_id="w", lease_until=self.now + timedelta(seconds=30)))
        assert self.task.attempt == before  # the attempt it was queued for

    @precondition(lambda self: self.task.status in HELD)
    @rule(percent=st.floats(min_value=0, max_value=100), chunk=st.text(max_size=5))
    def report(self, percent: float, chunk: str) -> None:
        self.apply(lifecycle.progress(self.task, Progress(percent, "p"), self.now))
        before = self.task.output_bytes
        self.apply(lifecycle.output(self.task, chunk, len(chunk.encode("utf-8", "surrogatepass")), self.now))
        assert self.task.output_bytes == before + len(chunk.encode("utf-8", "surrogatepass"))

    @precondition(lambda self: self.task.status is TaskStatus.RUNNING)
    @rule()
    def ask(self) -> None:
        left = (self.task.deadline_at - self.now).total_seconds() if self.task.deadline_at else 0
        self.apply(lifecycle.ask_input(self.task, "?", self.now, input_timeout_seconds=60))
        assert self.task.run_seconds_left == max(0.0, left)

    @rule(text=st.text(min_size=1, max_size=5))
    def message(self, text: str) -> None:
        before = self.task
        msg = TaskMessage(message_id="m", text=text, created_at=self.now)
        if before.status.terminal:
            with pytest.raises(TaskFinished):
                lifecycle.add_message(before, msg, self.now)
            return
        self.apply(lifecycle.add_message(before, msg, self.now))
        if before.status is TaskStatus.AWAITING_INPUT:
            assert self.task.status is TaskStatus.RUNNING
            assert self.task.deadline_at == self.now + timedelta(seconds=before.run_seconds_left or 0)
        else:
            assert self.task.status is before.status

    @rule()
    def cancel(self) -> None:
        before = self.task
        if before.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            with pytest.raises(TaskFinished):
                lifecycle.cancel(before, self.now)
            return
        self.apply(lifecycle.cancel(before, self.now))
        assert self.task.status is TaskStatus.CANCELLED
        if before.status is TaskStatus.CANCELLED:
            assert self.task == before  # idempotent: nothing changes, no event

    @precondition(lambda self: self.task.status in HELD)
    @rule(ok=st.booleans())
    def finish(self, ok: bool) -> None:
        if ok:
            self.apply(lifecycle.complete(self.task, TaskResult("r"), self.now))
        else:
            self.apply(lifecycle.fail(self.task, TaskError("WORKER_ERROR", "x"), self.now))

    @precondition(lambda self: self.task.status in HELD)
    @rule()
    def lose_lease(self) -> None:
        attempt = self.task.attempt
        self.apply(lifecycle.lose_lease(self.task, self.now, self.max_attempts))
        requeued = attempt < self.max_attempts
        expected = TaskStatus.QUEUED if requeued else TaskStatus.FAILED
        assert (self.task.status, self.task.status_reason) == (expected, "LEASE_LOST")
        assert self.task.attempt == attempt + requeued
        if requeued:  # the next attempt has neither started nor said anything yet
            assert (self.task.started_at, self.task.output_bytes, self.task.progress) == (None, 0, None)

    @precondition(lambda self: self.task.status in HELD)
    @rule()
    def deadline(self) -> None:
        awaiting = self.task.status is TaskStatus.AWAITING_INPUT
        self.apply(lifecycle.expire(self.task, self.now))
        assert self.task.error is not None
        assert self.task.error.code == ("INPUT_TIMEOUT" if awaiting else "TIMEOUT")

    @invariant()
    def the_output_count_is_the_current_attempts_output_events(self) -> None:
        # What GetStatus shows (the output events after output_after) is what the task counts.
        shown = "".join(
            e.data["output"] for e in self.events if e.type is EventType.OUTPUT and e.sequence > self.task.output_after
        )
        assert len(shown.encode("utf-8", "surrogatepass")) == self.task.output_bytes

    @invariant()
    def sequences_are_dense_and_match_the_task(self) -> None:
        assert [e.sequence for e in self.events] == list(range(1, len(self.events) + 1))
        assert self.task.last_sequence == len(self.events)

    @invariant()
    def only_held_tasks_have_a_worker_lease_and_deadline(self) -> None:
        held = self.task.status in HELD
        assert bool(self.task.worker_id) == held
        assert (self.task.lease_expires_at is not None) == held
        assert (self.task.deadline_at is not None) == held
        assert (self.task.run_seconds_left is not None) == (self.task.status is TaskStatus.AWAITING_INPUT)
        assert bool(self.task.input_prompt) == (self.task.status is TaskStatus.AWAITING_INPUT)

    @invariant()
    def terminal_is_forever(self) -> None:
        if self.was_terminal:
            assert self.task.status.terminal
        self.was_terminal = self.task.status.terminal
        assert (self.task.completed_at is not None) == self.task.status.terminal
        assert (self.task.result is not None) == (self.task.status is TaskStatus.COMPLETED)

    @invariant()
    def attempts_stay_within_bounds(self) -> None:
        assert 1 <= self.task.attempt <= self.max_attempts


TaskLifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
test_task_lifecycle = TaskLifecycle.TestCase
