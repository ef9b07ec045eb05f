"""One `WorkerService.Connect` stream: hello and welcome, heartbeats, acks, and the task handlers.

Everything the worker sends goes through one queue feeding the request iterator, so reports from
many handlers and the heartbeat loop never interleave on the wire. A `Session` lives exactly as
long as its stream: when the stream ends (or the worker stops) every handler it started is
cancelled and awaited before `serve` returns, because the server requeues those tasks and the
next connection may be handed the same ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agenttasks.observe import tracing
from agenttasks.stream_batches import packed
from agenttasks.v1 import worker_service_pb2, worker_service_pb2_grpc
from agenttasks.worker.context import (
    DISCONNECTED,
    LEASE_LOST,
    STORE_UNAVAILABLE,
    WORKER_ERROR,
    Handler,
    LeaseLost,
    ReportRejected,
    Result,
    TaskContext,
    TaskFailed,
)

log = logging.getLogger("agenttasks.worker")

HELLO_REQUEST_ID = 1
STORE_RETRY_FIRST_SECONDS = 0.2
STORE_RETRY_MAX_SECONDS = 2.0
WELCOME_TIMEOUT_SECONDS = 30.0
DEFAULT_HEARTBEAT_SECONDS = 10.0
# How long a stopping worker waits for the server to end the stream after it half-closed it:
# a clean end spares the server a CANCELLED stream in its logs; the tasks go back either way.
CLOSE_WAIT_SECONDS = 2.0
FALLBACK_MESSAGE_CHARS = 2000

FATAL_AT_CONNECT = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
"""Connect errors that no retry can fix: a bad key, a non-worker key, an unknown agent, a bad hello."""

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

HELLO_ATTEMPTS = 3
"""How often to say hello again at once when grpc-python lost the server's answer (see below)."""


def _answer_lost(error: grpc.aio.AioRpcError) -> bool:
    """grpc-python's race: when the server ends the call (e.g. refusing the key) while the hello
    is still being written, the failed write replaces the server's status with this INTERNAL one.
    The real answer comes on the next try."""
    return error.code() is grpc.StatusCode.INTERNAL and error.details() == "Internal error from Core"


# The largest report the server stores is a 1 MiB result; anything much bigger is refused here.
MAX_REPORT_BYTES = 2 * 1024 * 1024


class ConnectRefused(Exception):
    """The server refused the worker's hello for a reason retrying cannot fix."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        label = f"{code} ({reason})" if reason and reason != code else code
        super().__init__(f"{label}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class StreamEnded(ConnectionError):
    """The server ended the stream (or never welcomed us) without an error status."""


@dataclass(frozen=True, slots=True)
class Welcome:
    worker_id: str
    heartbeat_seconds: float
    lease_seconds: float


def _error_reason(details: Sequence[Any]) -> str:
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def rejection(status: status_pb2.Status) -> ReportRejected:
    """The exception for a non-OK ack: `LeaseLost` when the worker no longer holds the task."""
    code = _CODE_NAMES.get(status.code, str(status.code))
    reason = _error_reason(status.details)
    kind = LeaseLost if reason == LEASE_LOST else ReportRejected
    return kind(code, reason, status.message)


def describe(error: grpc.aio.AioRpcError) -> tuple[str, str, str]:
    """(code name, ErrorInfo reason, message) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return error.code().name, "", error.details() or ""
    return error.code().name, _error_reason(status.details), status.message


# At most this many reports, and this many bytes, in one batch message: the server takes
# messages of up to 8 MiB, and one report may be 2 MiB. A single report goes alone, as ever.
MAX_REPORTS_PER_MESSAGE = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class _Wire:
    """What the server's welcome said it reads: batches only once it said so."""

    batches: bool = False


def _requests(outbox: asyncio.Queue[worker_service_pb2.ConnectRequest | None], wire: _Wire) -> AsyncIterator[Any]:
    """The request stream: whatever is queued, until a None half-closes it. Reports queued
    together go out in one `ReportBatch` once the server said it reads them."""
    return packed(
        outbox,
        lambda request: request,
        lambda reports: worker_service_pb2.ConnectRequest(batch=worker_service_pb2.ReportBatch(reports=reports)),
        enabled=lambda: wire.batches,
        max_items=MAX_REPORTS_PER_MESSAGE,
        max_bytes=MAX_BATCH_BYTES,
    )


@dataclass(slots=True)
class _Running:
    ctx: TaskContext
    task: asyncio.Task[None]


class Session:
    """A welcomed Connect stream and the handlers running the tasks it was assigned."""

    def __init__(
        self,
        call: Any,
        outbox: asyncio.Queue[worker_service_pb2.ConnectRequest | None],
        welcome: Welcome,
        handler: Handler,
    ) -> None:
        self.welcome = welcome
        self._call = call
        self._outbox = outbox
        self._handler = handler
        self._ids = itertools.count(HELLO_REQUEST_ID + 1)
        self._pending: dict[int, asyncio.Future[status_pb2.Status]] = {}
        self._running: dict[str, _Running] = {}
        self._closed: LeaseLost | None = None

    @classmethod
    async def open(
        cls,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        hello: worker_service_pb2.Hello,
        handler: Handler,
    ) -> Session:
        """Say hello and wait for the welcome; raises `ConnectRefused` when retrying cannot help."""
        for attempt in range(1, HELLO_ATTEMPTS + 1):
            try:
                return await cls._open(channel, metadata, hello, handler)
            except grpc.aio.AioRpcError as error:
                if not _answer_lost(error) or attempt == HELLO_ATTEMPTS:
                    raise
                log.debug("the answer to the hello was lost (%s); saying hello again", error.details())
        raise AssertionError("unreachable")

    @classmethod
    async def _open(
        cls,
        channel: grpc.aio.Channel,
        metadata: Sequence[tuple[str, str]],
        given_hello: worker_service_pb2.Hello,
        handler: Handler,
    ) -> Session:
        outbox: asyncio.Queue[worker_service_pb2.ConnectRequest | None] = asyncio.Queue()
        hello = worker_service_pb2.Hello()
        hello.CopyFrom(given_hello)
        hello.accepts_batches = True
        outbox.put_nowait(worker_service_pb2.ConnectRequest(request_id=HELLO_REQUEST_ID, hello=hello))
        wire = _Wire()
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        call: Any = stub.Connect(_requests(outbox, wire), metadata=metadata)
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT_SECONDS):
                first = await call.read()
        except grpc.aio.AioRpcError as error:
            outbox.put_nowait(None)
            if error.code() in FATAL_AT_CONNECT:
                raise ConnectRefused(*describe(error)) from None
            raise
        except BaseException:
            outbox.put_nowait(None)
            call.cancel()
            raise
        if not isinstance(first, worker_service_pb2.ConnectResponse) or first.WhichOneof("kind") != "welcome":
            outbox.put_nowait(None)
            call.cancel()
            raise StreamEnded("the server did not answer the hello with a welcome")
        w = first.welcome
        wire.batches = w.accepts_batches  # an older server would not know a batch from a report
        heartbeat = w.heartbeat_seconds if w.heartbeat_seconds > 0 else DEFAULT_HEARTBEAT_SECONDS
        return cls(call, outbox, Welcome(w.worker_id, heartbeat, w.lease_seconds), handler)

    # --- reports (the context's Reporter) ---

    async def report(self, request: worker_service_pb2.ConnectRequest) -> None:
        """Send one report and wait for its ack; a non-OK ack raises `ReportRejected`/`LeaseLost`.

        A report the server could not store because its database was out of reach for a moment
        (STORE_UNAVAILABLE) is sent again, with backoff, as long as the stream lives: giving up
        would leave the task running with nobody to finish it."""
        delay = STORE_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self._report_once(request)
            except ReportRejected as rejected:
                if rejected.reason != STORE_UNAVAILABLE or self._closed is not None:
                    raise
                log.info("the server's database is out of reach; sending the report again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)

    async def _report_once(self, request: worker_service_pb2.ConnectRequest) -> None:
        if self._closed is not None:
            raise self._closed
        if (size := request.ByteSize()) > MAX_REPORT_BYTES:
            # Sent, it would end the whole stream (gRPC's message limit) and requeue every task
            # of this worker; refused here, only this report fails.
            raise ReportRejected("INVALID_ARGUMENT", "REPORT_TOO_LARGE", f"{size} bytes; at most {MAX_REPORT_BYTES}")
        request_id = next(self._ids)
        request.request_id = request_id
        ack: asyncio.Future[status_pb2.Status] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = ack
        self._outbox.put_nowait(request)
        try:
            status = await ack
        finally:
            self._pending.pop(request_id, None)
        if status.code != 0:
            raise rejection(status)

    # --- the stream ---

    async def serve(self, stopping: asyncio.Event) -> None:
        """Handle the stream until it ends or `stopping` is set, then cancel and await every handler.

        Raises the stream's error (an `AioRpcError`, or `StreamEnded`) when it broke rather than
        being stopped.
        """
        reader = asyncio.create_task(self._read(), name="agenttasks-worker-reader")
        heartbeat = asyncio.create_task(self._heartbeats(), name="agenttasks-worker-heartbeat")
        stop = asyncio.create_task(stopping.wait(), name="agenttasks-worker-stop")
        try:
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._close(reader)
            for side in (heartbeat, stop):
                side.cancel()
            await asyncio.gather(heartbeat, stop, return_exceptions=True)
        if stopping.is_set():
            return  # whatever the reader saw then was our own doing
        if not reader.cancelled() and (error := reader.exception()) is not None:
            raise error
        raise StreamEnded("the server ended the stream")

    async def _close(self, reader: asyncio.Task[None]) -> None:
        """Stop every handler (reports fail from now on), then end the stream."""
        self._closed = LeaseLost("UNAVAILABLE", DISCONNECTED, "the connection to the server was closed")
        for ack in self._pending.values():
            if not ack.done():
                ack.set_exception(self._closed)
        running = list(self._running.values())
        for entry in running:
            entry.ctx.revoke(DISCONNECTED, self._closed)
            entry.task.cancel()
        if running:
            await asyncio.gather(*(entry.task for entry in running), return_exceptions=True)
        self._outbox.put_nowait(None)
        if not reader.done():
            await asyncio.wait({reader}, timeout=CLOSE_WAIT_SECONDS)
        self._call.cancel()
        if not reader.done():
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.welcome.heartbeat_seconds)
            self._outbox.put_nowait(
                worker_service_pb2.ConnectRequest(request_id=0, heartbeat=worker_service_pb2.Heartbeat())
            )

    async def _read(self) -> None:
        while True:
            message = await self._call.read()
            if not isinstance(message, worker_service_pb2.ConnectResponse):  # EOF: the server ended it
                return
            if message.WhichOneof("kind") == "batch":
                for push in message.batch.pushes:
                    await self._on_push(push)
            else:
                await self._on_push(message)

    async def _on_push(self, message: worker_service_pb2.ConnectResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "ack":
            self._on_ack(message.ack)
        elif kind == "assign":
            self._on_assign(message.assign)
        elif kind == "deliver":
            await self._on_deliver(message.deliver)
        elif kind == "cancel":
            self._on_cancel(message.cancel)
        else:  # a newer server's push this worker does not know: nothing to do
            log.debug("ignoring server message of kind %s", kind)

    def _on_ack(self, ack: worker_service_pb2.Ack) -> None:
        future = self._pending.get(ack.request_id)
        if future is not None and not future.done():
            future.set_result(ack.status)

    def _on_assign(self, assignment: worker_service_pb2.Assignment) -> None:
        if self._closed is not None:  # closing: the server takes it back when the stream ends
            return
        ctx = TaskContext(assignment, self)
        previous = self._running.get(ctx.task_id)
        if previous is not None:
            if previous.ctx.attempt == ctx.attempt:
                log.warning("task %s attempt %d assigned twice; keeping the running one", ctx.task_id, ctx.attempt)
                return
            # A newer attempt of a task we still run means the server took the old one back.
            self._revoke(previous, LEASE_LOST)
        log.info("task %s attempt %d assigned", ctx.task_id, ctx.attempt)
        wait_for = previous.task if previous is not None else None
        task = asyncio.create_task(self._run(ctx, wait_for), name=f"agenttasks-task-{ctx.task_id}")
        self._running[ctx.task_id] = _Running(ctx, task)

    async def _on_deliver(self, delivery: worker_service_pb2.MessageDelivery) -> None:
        entry = self._running.get(delivery.task_id)
        if entry is not None and entry.ctx.attempt == delivery.attempt and not entry.ctx.revoked:
            await entry.ctx.deliver(delivery.message, delivery.is_reply)

    def _on_cancel(self, cancel: worker_service_pb2.CancelTask) -> None:
        entry = self._running.get(cancel.task_id)
        if entry is not None and entry.ctx.attempt == cancel.attempt:
            log.info("task %s cancelled by the server (%s)", cancel.task_id, cancel.reason)
            self._revoke(entry, cancel.reason or "CANCELLED")

    def _revoke(self, entry: _Running, reason: str) -> None:
        entry.ctx.revoke(reason, LeaseLost("CANCELLED", reason, f"the server cancelled the task ({reason})"))
        entry.ctx.cancelled.set()
        entry.task.cancel()

    # --- one task ---

    async def _run(self, ctx: TaskContext, previous: asyncio.Task[None] | None) -> None:
        attributes: dict[str, str | int] = {"agenttasks.task_id": ctx.task_id, "agenttasks.attempt": ctx.attempt}
        try:
            if previous is not None:  # never run two attempts of one task at once
                await asyncio.gather(previous, return_exceptions=True)
            # The handling continues the task's trace; its reports (and an exec runner's program)
            # carry this span's context, or the assignment's with tracing off here.
            with tracing.child_of(ctx.trace, "agenttasks.worker.handle", "consumer", attributes):
                ctx.report_trace = tracing.current()[0] or ctx.trace[0]
                request = await self._outcome(ctx)
                if request is not None:
                    request = await self._after_output(ctx, request)
                if request is not None and not ctx.revoked:
                    await self._final_report(ctx, request)
        finally:
            entry = self._running.get(ctx.task_id)
            if entry is not None and entry.ctx is ctx:
                del self._running[ctx.task_id]

    async def _outcome(self, ctx: TaskContext) -> worker_service_pb2.ConnectRequest | None:
        """Run the handler; the report that ends the task, or None when there is nothing to say."""
        try:
            outcome: Any = await self._handler(ctx)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if ctx.revoked or (task is not None and task.cancelling()):
                raise
            # Not our cancellation: something inside the handler was cancelled and it gave up.
            return ctx.fail_request(WORKER_ERROR, "the handler was cancelled")
        except TaskFailed as failure:
            return ctx.fail_request(failure.code, failure.message)
        except LeaseLost as lost:
            log.info("task %s attempt %d: %s", ctx.task_id, ctx.attempt, lost)
            return None
        except Exception as error:
            log.exception("task %s attempt %d: the handler failed", ctx.task_id, ctx.attempt)
            return ctx.fail_request(WORKER_ERROR, str(error) or type(error).__name__)
        if outcome is None:
            outcome = ""
        if not isinstance(outcome, str | Result):
            return ctx.fail_request(WORKER_ERROR, f"the handler returned {type(outcome).__name__}, not str or Result")
        try:
            return ctx.complete_request(outcome)
        except (ValueError, TypeError) as error:  # data a JSON object cannot hold (a datetime...)
            return ctx.fail_request(WORKER_ERROR, f"the result's data is not JSON: {error}")

    async def _after_output(
        self, ctx: TaskContext, request: worker_service_pb2.ConnectRequest
    ) -> worker_service_pb2.ConnectRequest | None:
        """The ending report once the task's queued output is stored (it goes first, so a
        watcher never sees the result before the output). Output the server refused, which the
        handler never heard of, fails a task that would have completed: the handler would have
        seen the exception had it waited for that chunk, as it did when every chunk waited."""
        refused = await ctx.settle_output()
        if isinstance(refused, LeaseLost):
            log.info("task %s attempt %d: %s", ctx.task_id, ctx.attempt, refused)
            return None
        if refused is not None and request.WhichOneof("kind") == "complete":
            return ctx.fail_request(WORKER_ERROR, f"output was refused: {refused.message}")
        return request

    async def _final_report(self, ctx: TaskContext, request: worker_service_pb2.ConnectRequest) -> None:
        try:
            await self.report(request)
        except LeaseLost as lost:
            log.warning("task %s attempt %d: result not accepted: %s", ctx.task_id, ctx.attempt, lost)
        except ReportRejected as rejected:
            what = "result" if request.WhichOneof("kind") == "complete" else "failure"
            log.error("task %s attempt %d: %s rejected: %s", ctx.task_id, ctx.attempt, what, rejected)
            # An outcome the server will not store (too large, a malformed code) must not leave
            # the task running until its timeout: fail it plainly, saying why.
            message = f"the worker's {what} was rejected: {rejected.message}"[:FALLBACK_MESSAGE_CHARS]
            try:
                await self.report(ctx.fail_request(WORKER_ERROR, message))
            except ReportRejected as again:
                log.error("task %s attempt %d: failure rejected too: %s", ctx.task_id, ctx.attempt, again)
