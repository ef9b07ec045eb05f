"""What a handler sees of one task: its fields, its client messages, and the reports it can send.

A `TaskContext` belongs to one attempt of one task on one connection. Every report waits for the
server's ack, so a handler learns at once (as `LeaseLost`) that it no longer holds the task and
can stop instead of working for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import json_format, struct_pb2

from agenttasks.v1 import task_pb2, worker_service_pb2

# Raised at handlers, and imported from here since before they had a module of their own.
from agenttasks.worker.errors import LeaseLost as LeaseLost
from agenttasks.worker.errors import ReportRejected as ReportRejected
from agenttasks.worker.errors import TaskFailed as TaskFailed
from agenttasks.worker.output import OutputStream

CANCELLED = "CANCELLED"
DISCONNECTED = "DISCONNECTED"
LEASE_LOST = "LEASE_LOST"
# The server could not reach its database for a moment: the report changed nothing; send it again.
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
WORKER_ERROR = "WORKER_ERROR"


@dataclass(frozen=True, slots=True)
class Result:
    """What a handler returns when the result has structured data besides its text."""

    text: str = ""
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A message the task's client sent (SendMessage), as delivered to the worker."""

    message_id: str
    text: str
    created_at: datetime | None


def client_message(message: task_pb2.TaskMessage) -> ClientMessage:
    created = message.created_at.ToDatetime(tzinfo=UTC) if message.HasField("created_at") else None
    return ClientMessage(message.message_id, message.text, created)


class Reporter(Protocol):
    """The connection side of a context: sends one report and waits for its ack."""

    async def report(self, request: worker_service_pb2.ConnectRequest) -> None: ...


class TaskContext:
    """One assigned task, as the handler sees it.

    `messages` holds every client message received so far (those sent before the task started
    first); `next_message()` walks through all of them in order, `ask()` waits for the reply to
    one question. `cancelled` is set when the server cancels the task (client cancel, timeout,
    lease lost); the handler is then cancelled too and may no longer report.
    """

    def __init__(
        self,
        assignment: worker_service_pb2.Assignment,
        reporter: Reporter,
    ) -> None:
        task = assignment.task
        self.task_id: str = task.task_id
        self.agent_id: str = task.agent_id
        self.attempt: int = task.attempt
        self.message: str = task.message
        self.priority: int = task.priority
        self.metadata: dict[str, Any] = _to_dict(task.metadata) if task.HasField("metadata") else {}
        self.timeout_seconds: int = task.timeout_seconds
        self.deadline: datetime | None = (
            assignment.deadline.ToDatetime(tzinfo=UTC) if assignment.HasField("deadline") else None
        )
        self.messages: list[ClientMessage] = [client_message(m) for m in assignment.messages]
        self.trace: tuple[str, str] = (assignment.traceparent, assignment.tracestate)
        """The W3C trace context (traceparent, tracestate) the server sent with the task: its
        dispatch span, in the trace of its Submit. ("", "") when the task has none."""
        # The traceparent each report carries: the worker's handling span (set by the connection).
        self.report_trace = assignment.traceparent
        self.cancelled = asyncio.Event()
        self.cancel_reason: str = ""
        self._reporter = reporter
        self._ref = worker_service_pb2.TaskRef(task_id=self.task_id, attempt=self.attempt)
        self._arrived = asyncio.Condition()
        self._read = 0
        self._replies: list[ClientMessage] = []
        self._gone: LeaseLost | None = None
        self._output = OutputStream(self._send_output, len(task.output.encode()))

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id!r}, attempt={self.attempt})"

    async def progress(self, percent: float, text: str = "") -> None:
        """Report progress (0 to 100) and a line saying what the agent is doing."""
        await self._report(progress=worker_service_pb2.ReportProgress(task=self._ref, percent=percent, text=text))

    async def output(self, chunk: str) -> None:
        """Append a chunk to the task's output; clients watching the task see it at once.

        It returns once the chunk is queued (it waits only while 1 MiB is queued): chunks written
        while a report is on its way go together in the next one, so a handler can write tokens
        as fast as it makes them. `flush()` waits until they are stored. A chunk the server
        refused (the task's 1 MiB of output is full, or the task is no longer held) raises here
        on the next call, or in `flush()`.
        """
        if self._gone is not None:
            raise self._gone
        await self._output.write(chunk)

    async def flush(self) -> None:
        """Wait until all output written so far is stored, as `drain()` does for a stream.
        Completing or failing the task flushes first, so a handler need not call it."""
        if self._gone is not None:
            raise self._gone
        await self._output.flush()

    async def ask(self, prompt: str) -> str:
        """Ask the client a question and wait for the reply (the task is awaiting_input meanwhile).

        The reply is the message the server marks as answering the question (`is_reply`): a
        message the client sent just before the question, even one delivered after it, is not.
        """
        asked = len(self._replies)
        await self._report(request_input=worker_service_pb2.RequestInput(task=self._ref, prompt=prompt))
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self._replies) > asked)
        return self._replies[asked].text

    async def next_message(self) -> ClientMessage:
        """The next client message not yet returned by this method, waiting for one if needed.

        It walks through every message in order, the ones sent before the task started and the
        replies to `ask()` included.
        """
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) > self._read)
        self._read += 1
        return self.messages[self._read - 1]

    async def _report(self, **kind: Any) -> None:
        if self._gone is not None:
            raise self._gone
        await self._output.drain()  # what was written before it is stored before it
        await self._reporter.report(worker_service_pb2.ConnectRequest(traceparent=self.report_trace, **kind))

    async def _send_output(self, text: str, offset: int) -> None:
        output = worker_service_pb2.AppendOutput(task=self._ref, chunk=text, offset=offset)
        await self._reporter.report(worker_service_pb2.ConnectRequest(traceparent=self.report_trace, output=output))

    # --- called by the connection ---

    async def deliver(self, message: task_pb2.TaskMessage, is_reply: bool = False) -> None:
        async with self._arrived:
            received = client_message(message)
            self.messages.append(received)
            if is_reply:
                self._replies.append(received)
            self._arrived.notify_all()

    def revoke(self, reason: str, lost: LeaseLost) -> None:
        """The task is no longer ours: reports raise `lost` from now on, queued output is dropped."""
        if self._gone is None:
            self._gone = lost
            self.cancel_reason = reason
            self._output.close()

    async def settle_output(self) -> ReportRejected | None:
        """Wait until the queued output is stored (before the report that ends the task); the
        server's refusal of some of it, if the handler never saw that refusal raised."""
        await self._output.drain()
        refused = self._output.refused
        return None if refused is None or self._output.refusal_seen else refused

    @property
    def revoked(self) -> bool:
        return self._gone is not None

    def complete_request(self, outcome: str | Result) -> worker_service_pb2.ConnectRequest:
        result = outcome if isinstance(outcome, Result) else Result(text=outcome)
        data: struct_pb2.Struct | None = None
        if result.data is not None:
            data = struct_pb2.Struct()
            data.update(result.data)
        return worker_service_pb2.ConnectRequest(
            traceparent=self.report_trace,
            complete=worker_service_pb2.CompleteTask(task=self._ref, text=result.text, data=data),
        )

    def fail_request(self, code: str, message: str) -> worker_service_pb2.ConnectRequest:
        return worker_service_pb2.ConnectRequest(
            traceparent=self.report_trace,
            fail=worker_service_pb2.FailTask(task=self._ref, code=code or WORKER_ERROR, message=message),
        )


def _to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    value: dict[str, Any] = _whole_numbers(json_format.MessageToDict(struct))
    return value


def _whole_numbers(value: Any) -> Any:
    """A Struct carries every number as a double; give back the ints the client most likely sent."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


Handler = Callable[[TaskContext], Awaitable[str | Result]]
"""An agent: gets a task's context, returns the result text (or a `Result`), or raises."""
