"""gRPC WorkerService: one bidirectional stream per worker, bridged to the Dispatcher.

The stream's first message must be `hello`. After `welcome`, two things run side by side: a
reader that turns each report into a dispatcher call (acked with a google.rpc.Status), and the
writer (this generator) that sends whatever the dispatcher puts in the session's outbox.

Reports run concurrently so that one worker's many tasks do not wait on each other's commits.
Their order still holds: each report reaches the store's single writer queue in arrival order,
because a report's first step enqueues its write before anything can suspend it.

Batches (see `agenttasks.stream_batches` for why): a worker whose hello says `accepts_batches`
gets the pushes that are ready at once packed into one `PushBatch`, and the welcome tells every
worker that it may pack its reports into a `ReportBatch`. The reports of a batch are applied in
one write function, in order, each acked with its own outcome, as if they had come one by one:
one write instead of one per report saves each report's own task, future, savepoint and
publish round (end to end with BatchSubmit went from ~2,600 to ~3,000 tasks/s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from typing import Any

import grpc

from agenttasks.api import convert
from agenttasks.api.errors import rich_status
from agenttasks.api.gate import Gate
from agenttasks.core import dispatch
from agenttasks.core.dispatch import Ack, Assign, Deliver, Dispatcher, Push, Report, Stop, TaskRef, WorkerSession
from agenttasks.core.errors import DomainError, InvalidArgument
from agenttasks.core.model import Principal, TaskMessage
from agenttasks.observe import logs, tracing
from agenttasks.stream_batches import packed
from agenttasks.v1 import task_pb2, worker_service_pb2_grpc
from agenttasks.v1 import worker_service_pb2 as pb

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[object, object]
CONNECT = "/agenttasks.v1.WorkerService/Connect"
# At most this many pushes, and this many bytes, in one batch message: gRPC's default receive
# limit is 4 MiB, and an assignment carries its task's output (up to 1 MiB). A single push is
# sent whatever its size, as it always was.
MAX_PUSHES_PER_MESSAGE = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024 - 64 * 1024


def _ref(message: pb.TaskRef) -> TaskRef:
    return TaskRef(task_id=message.task_id, attempt=message.attempt)


def _message(m: TaskMessage) -> task_pb2.TaskMessage:
    return task_pb2.TaskMessage(message_id=m.message_id, text=m.text, created_at=convert.timestamp(m.created_at))


def _push(item: Push) -> pb.ConnectResponse:
    if isinstance(item, Assign):
        assignment = pb.Assignment(
            task=convert.task(item.task),
            messages=[_message(m) for m in item.messages],
            deadline=convert.timestamp(item.task.deadline_at),
            traceparent=item.trace[0],
            tracestate=item.trace[1],
        )
        return pb.ConnectResponse(assign=assignment)
    if isinstance(item, Deliver):
        delivery = pb.MessageDelivery(
            task_id=item.task_id, attempt=item.attempt, message=_message(item.message), is_reply=item.is_reply
        )
        return pb.ConnectResponse(deliver=delivery)
    if isinstance(item, Stop):
        return pb.ConnectResponse(cancel=pb.CancelTask(task_id=item.task_id, attempt=item.attempt, reason=item.reason))
    status = rich_status(item.error) if item.error is not None else None
    return pb.ConnectResponse(ack=pb.Ack(request_id=item.request_id, status=status))


def outgoing(outbox: asyncio.Queue[Push | None], batches: bool) -> AsyncIterator[pb.ConnectResponse]:
    """The stream's messages: each push in turn until None; for a worker that reads batches,
    the pushes already waiting packed with the first (within the bounds above)."""
    return packed(
        outbox,
        _push,
        lambda pushes: pb.ConnectResponse(batch=pb.PushBatch(pushes=pushes)),
        enabled=lambda: batches,
        max_items=MAX_PUSHES_PER_MESSAGE,
        max_bytes=MAX_BATCH_BYTES,
    )


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, dispatcher: Dispatcher, gate: Gate) -> None:
        self._dispatcher = dispatcher
        self._gate = gate

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Ctx
    ) -> AsyncIterator[pb.ConnectResponse]:
        # Read the hello before authenticating: refusing a stream whose first message is still in
        # flight makes grpcio report INTERNAL to the client now and then instead of our status.
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return

        async def run(principal: Principal) -> AsyncIterator[pb.ConnectResponse]:
            if first.WhichOneof("kind") != "hello":
                raise InvalidArgument.field("hello", "the first message of a worker stream must be hello")
            hello = first.hello
            session = await self._dispatcher.connect(principal, hello.agent_id, hello.capacity, hello.worker_name)
            logs.bind(agent_id=session.agent_id, worker_id=session.worker_id)  # before the reader starts
            reader = asyncio.create_task(self._read(session, requests), name=f"worker-{session.worker_id}")
            try:
                yield pb.ConnectResponse(
                    welcome=pb.Welcome(
                        worker_id=session.worker_id,
                        heartbeat_seconds=self._dispatcher.heartbeat_seconds,
                        lease_seconds=self._dispatcher.lease.total_seconds(),
                        accepts_batches=True,
                    )
                )
                async for message in outgoing(session.outbox, hello.accepts_batches):
                    yield message
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await self._dispatcher.disconnect(session)

        async for message in self._gate.stream(context, CONNECT, run):
            yield message

    async def _read(
        self,
        session: WorkerSession,
        requests: AsyncIterator[pb.ConnectRequest],
    ) -> None:
        pending: set[asyncio.Task[None]] = set()

        def start(handling: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(handling)
            pending.add(task)
            task.add_done_callback(pending.discard)

        try:
            async for message in requests:
                if message.WhichOneof("kind") != "batch":
                    start(self._handle(session, message))
                    continue
                # A batch's reports are applied in one write, in order, as if each had come in a
                # message of its own; anything else in it is handled on its own.
                items = message.batch.reports
                reports = [r for r in items if r.WhichOneof("kind") in REPORT_KINDS]
                if reports:
                    start(self._handle_reports(session, reports))
                for request in items:
                    if request.WhichOneof("kind") not in REPORT_KINDS:
                        start(self._handle(session, request))
        except grpc.aio.AioRpcError:
            pass  # the worker went away; what it reported so far still completes below
        finally:
            # Let reports already received commit before the connection's leases are taken back.
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            session.outbox.put_nowait(None)

    async def _handle(self, session: WorkerSession, request: pb.ConnectRequest) -> None:
        error: BaseException | None = None
        span = _report_span(session, request)
        try:
            await self._dispatch(session, request)
        except DomainError as failure:
            error = failure
        except Exception as failure:  # answered as INTERNAL; the worker's stream stays up
            log.exception("worker report failed")
            error = failure
        span.end(error)
        if request.request_id:
            session.outbox.put_nowait(Ack(request.request_id, error))

    async def _handle_reports(self, session: WorkerSession, requests: list[pb.ConnectRequest]) -> None:
        """Reports of one batch in one write; each is acked with its own outcome, in order."""
        errors: list[BaseException | None] = [None] * len(requests)
        spans = [_report_span(session, request) for request in requests]
        valid: list[tuple[int, Report]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, _report(request)))
            except DomainError as refused:
                errors[index] = refused
            except Exception as failure:  # answered as INTERNAL, as _handle does
                log.exception("worker report failed")
                errors[index] = failure
        if valid:
            outcomes: Sequence[BaseException | None]
            try:
                outcomes = await self._dispatcher.report(session, [report for _, report in valid])
            except DomainError as refused:  # none is raised today; all would be refused alike
                outcomes = [refused] * len(valid)
            except Exception as failure:  # answered as INTERNAL; the worker's stream stays up
                log.exception("worker reports failed")
                outcomes = [failure] * len(valid)
            for (index, _), outcome in zip(valid, outcomes, strict=True):
                errors[index] = outcome
        for span, error in zip(spans, errors, strict=True):
            span.end(error)
        for request, error in zip(requests, errors, strict=True):
            if request.request_id:
                session.outbox.put_nowait(Ack(request.request_id, error))

    def _dispatch(self, session: WorkerSession, request: pb.ConnectRequest) -> Awaitable[None]:
        kind = request.WhichOneof("kind")
        if kind == "heartbeat":
            return self._dispatcher.heartbeat(session)
        if kind in REPORT_KINDS:
            return self._dispatcher.report_one(session, *_report(request))
        if kind == "batch":
            raise InvalidArgument.field("batch", "a batch may not hold another batch")
        raise InvalidArgument.field(kind or "kind", "not allowed here: hello comes once, first")


REPORT_KINDS = frozenset({"progress", "output", "request_input", "complete", "fail"})


def _report_span(session: WorkerSession, request: pb.ConnectRequest) -> tracing.Span:
    """The span of one report, under the handling span the report names, or else under the
    task's dispatch span; none for an untraced task (or with tracing off)."""
    kind = request.WhichOneof("kind")
    if not tracing.enabled() or kind not in REPORT_KINDS:
        return tracing.NO_SPAN
    task_id: str = getattr(request, kind).task.task_id
    trace = (request.traceparent, "") if request.traceparent else session.traces.get(task_id, tracing.NO_TRACE)
    attributes: tracing.Attributes = {"agenttasks.report": kind, "agenttasks.task_id": task_id}
    return tracing.start(trace, f"agenttasks.report.{kind}", "server", attributes)


def _report(request: pb.ConnectRequest) -> Report:
    """The task a report is about and the change it makes; InvalidArgument if its fields are bad."""
    kind = request.WhichOneof("kind")
    if kind == "progress":
        p = request.progress
        return _ref(p.task), dispatch.progress_change(p.percent, p.text)
    if kind == "output":
        o = request.output
        return _ref(o.task), dispatch.output_change(o.chunk, o.offset if o.HasField("offset") else None)
    if kind == "request_input":
        return _ref(request.request_input.task), dispatch.ask_change(request.request_input.prompt)
    if kind == "complete":
        c = request.complete
        return _ref(c.task), dispatch.complete_change(c.text, convert.struct_to_dict(c, "data"))
    if kind == "fail":
        return _ref(request.fail.task), dispatch.fail_change(request.fail.code, request.fail.message)
    raise InvalidArgument.field(kind or "kind", "not a report")
