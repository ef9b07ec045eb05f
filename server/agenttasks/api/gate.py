"""The one wrapper every RPC goes through: authenticate, authorize, run, map errors.

Domain errors become rich statuses from the error table; anything else is logged with its trace
and leaves as INTERNAL with a generic message, so nothing reaches a client as UNKNOWN or with a
stack trace. Streams that already sent messages end with a final message instead of an error
status, because an error after the first message is invisible to HTTP/1.1 clients behind Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import grpc

from agenttasks.api.body_fields import BODY_FIELDS_HEADER, check_body_fields
from agenttasks.api.errors import to_status
from agenttasks.auth.roles import authorize
from agenttasks.core.call_slots import CallSlots
from agenttasks.core.errors import CallTimedOut, DomainError, RateLimited, ShuttingDown
from agenttasks.core.model import Principal
from agenttasks.core.rate_limit import TokenBuckets
from agenttasks.observe import logs, tracing

log = logging.getLogger(__name__)

Resp = TypeVar("Resp")


class Authenticates(Protocol):
    async def authenticate(self, metadata: Mapping[str, str]) -> Principal: ...


def call_metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    """The call's text metadata with lower-case keys (binary `-bin` entries are skipped)."""
    return {key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class Gate:
    def __init__(
        self,
        authenticator: Authenticates,
        rate_limit: TokenBuckets | None = None,
        deadline: float | None = None,
        slots: CallSlots | None = None,
    ) -> None:
        """`rate_limit`: calls allowed per credential (None: no limit). `deadline`: seconds a
        unary call may take on the server, whatever deadline its client set (None: none).
        `slots`: unary calls one tenant may have running at once (None: no limit)."""
        self._auth = authenticator
        self._rate_limit = rate_limit
        self._deadline = deadline
        self.slots = slots
        self.draining = False
        # When the last call came in (time.monotonic()): a draining server waits for a quiet moment.
        self.last_call = 0.0
        # Told of each call's end: (method, code, seconds for a unary call or None); metrics.
        self.observe: Callable[[str, grpc.StatusCode, float | None], None] | None = None

    async def _principal(self, context: grpc.aio.ServicerContext[object, object], method: str) -> Principal:
        self.last_call = time.monotonic()
        if self.draining:
            raise ShuttingDown("server is shutting down; retry shortly")
        metadata = call_metadata(context)
        principal = await self._auth.authenticate(metadata)
        logs.bind(tenant=principal.tenant, credential=principal.subject)
        if self._rate_limit is not None and (wait := self._rate_limit.take(principal.subject)):
            raise RateLimited(wait)
        authorize(principal, method)
        if (body_fields := metadata.get(BODY_FIELDS_HEADER)) is not None:  # a REST call with a body
            check_body_fields(method, body_fields)
        return principal

    async def unary(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], Awaitable[Resp]],
        request: object = None,
    ) -> Resp:
        """`request`: the call's request message, whose ids (agent, task) its log lines carry."""
        # The span (a no-op with tracing off) first, so the call's log lines carry its trace id.
        with tracing.server_span(method, context.invocation_metadata), logs.RpcLog(context, method, request):
            return await self._unary(context, method, handler)

    async def _unary(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], Awaitable[Resp]],
    ) -> Resp:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline):
                principal = await self._principal(context, method)
                if self.slots is None:
                    response = await handler(principal)
                else:  # the wait for a slot counts against the deadline too
                    async with self.slots.slot(principal.tenant, principal.role):
                        response = await handler(principal)
            if self.observe is not None:
                self.observe(method, grpc.StatusCode.OK, time.perf_counter() - began)
            return response
        except TimeoutError:
            # What it had started may still finish (a queued write commits), as for a client's
            # own deadline; the client hears that it took too long.
            failure: BaseException = CallTimedOut(self._deadline or 0.0)
        except Exception as error:
            failure = error
        await self._abort(context, method, failure, time.perf_counter() - began)
        raise AssertionError("unreachable: abort raises")

    async def stream(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], AsyncIterator[Resp]],
        on_midstream_error: Callable[[BaseException], Resp] | None = None,
        request: object = None,
    ) -> AsyncIterator[Resp]:
        with logs.RpcLog(context, method, request):  # its access line when the stream ends
            # Closed with this one, so the handler's own clean-up runs now, not when collected.
            async with contextlib.aclosing(self._stream(context, method, handler, on_midstream_error)) as messages:
                async for message in messages:
                    yield message

    async def _stream(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], AsyncIterator[Resp]],
        on_midstream_error: Callable[[BaseException], Resp] | None = None,
    ) -> AsyncGenerator[Resp]:
        sent = False
        try:
            principal = await self._principal(context, method)
            async for message in handler(principal):
                yield message
                sent = True
            if self.observe is not None:
                self.observe(method, grpc.StatusCode.OK, None)
            return
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            if self.observe is not None:
                self.observe(method, grpc.StatusCode.CANCELLED, None)
            raise
        except Exception as error:
            failure: BaseException = error
        if sent and on_midstream_error is not None:
            log.error("stream %s failed after its first message", method, exc_info=failure)
            if self.observe is not None:  # counted under its error, though its status is OK
                self.observe(method, to_status(failure).code, None)
            yield on_midstream_error(failure)
            return
        await self._abort(context, method, failure, None)

    async def _abort(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        error: BaseException,
        seconds: float | None,
    ) -> None:
        if not isinstance(error, DomainError):
            log.error("unexpected error in %s", method, exc_info=error)
        status = to_status(error)
        if self.observe is not None:
            self.observe(method, status.code, seconds)
        tracing.annotate({"rpc.grpc.status_code": status.code.value[0]})
        await context.abort(status.code, status.details, status.trailing_metadata)
