"""The one wrapper every RPC goes through: authenticate, authorize, run, map errors.

Domain errors become rich statuses from the error table; anything else is logged with its trace
and leaves as INTERNAL with a generic message, so nothing reaches a client as UNKNOWN or with a
stack trace. Streams that already sent messages end with a final message instead of an error
status, because an error after the first message is invisible to HTTP/1.1 clients behind Envoy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import grpc

from agenttasks.api.body_fields import BODY_FIELDS_HEADER, check_body_fields
from agenttasks.api.errors import to_status
from agenttasks.auth.roles import authorize
from agenttasks.core.errors import CallTimedOut, DomainError, RateLimited, ShuttingDown
from agenttasks.core.model import Principal
from agenttasks.core.rate_limit import TokenBuckets
from agenttasks.observe import tracing

log = logging.getLogger(__name__)

Resp = TypeVar("Resp")


class Authenticates(Protocol):
    async def authenticate(self, metadata: Mapping[str, str]) -> Principal: ...


def call_metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    """The call's text metadata with lower-case keys (binary `-bin` entries are skipped)."""
    return {key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class Gate:
    def __init__(
        self, authenticator: Authenticates, rate_limit: TokenBuckets | None = None, deadline: float | None = None
    ) -> None:
        """`rate_limit`: calls allowed per credential (None: no limit). `deadline`: seconds a
        unary call may take on the server, whatever deadline its client set (None: none)."""
        self._auth = authenticator
        self._rate_limit = rate_limit
        self._deadline = deadline
        self.draining = False
        # When the last call came in (time.monotonic()): a draining server waits for a quiet moment.
        self.last_call = 0.0

    async def _principal(self, context: grpc.aio.ServicerContext[object, object], method: str) -> Principal:
        self.last_call = time.monotonic()
        if self.draining:
            raise ShuttingDown("server is shutting down; retry shortly")
        metadata = call_metadata(context)
        principal = await self._auth.authenticate(metadata)
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
    ) -> Resp:
        with tracing.server_span(method, context.invocation_metadata):  # a no-op with tracing off
            return await self._unary(context, method, handler)

    async def _unary(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], Awaitable[Resp]],
    ) -> Resp:
        try:
            async with asyncio.timeout(self._deadline):
                return await handler(await self._principal(context, method))
        except TimeoutError:
            # What it had started may still finish (a queued write commits), as for a client's
            # own deadline; the client hears that it took too long.
            failure: BaseException = CallTimedOut(self._deadline or 0.0)
        except Exception as error:
            failure = error
        await self._abort(context, method, failure)
        raise AssertionError("unreachable: abort raises")

    async def stream(
        self,
        context: grpc.aio.ServicerContext[object, object],
        method: str,
        handler: Callable[[Principal], AsyncIterator[Resp]],
        on_midstream_error: Callable[[BaseException], Resp] | None = None,
    ) -> AsyncIterator[Resp]:
        sent = False
        try:
            principal = await self._principal(context, method)
            async for message in handler(principal):
                yield message
                sent = True
            return
        except Exception as error:
            failure: BaseException = error
        if sent and on_midstream_error is not None:
            log.error("stream %s failed after its first message", method, exc_info=failure)
            yield on_midstream_error(failure)
            return
        await self._abort(context, method, failure)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext[object, object], method: str, error: BaseException) -> None:
        if not isinstance(error, DomainError):
            log.error("unexpected error in %s", method, exc_info=error)
        status = to_status(error)
        tracing.annotate({"rpc.grpc.status_code": status.code.value[0]})
        await context.abort(status.code, status.details, status.trailing_metadata)
