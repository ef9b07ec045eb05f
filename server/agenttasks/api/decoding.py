"""Requests the server cannot decode answer INVALID_ARGUMENT, not grpcio's UNKNOWN and a traceback.

grpcio decodes a request before any servicer code runs; bytes that are not the method's message
(a truncated message, a string field holding invalid UTF-8, which Envoy passes on from a path
like `/agent/x/task/%ff`, a Struct nested past protobuf's recursion limit) end in grpcio's own
`Unexpected DecodeError` (UNKNOWN over gRPC, 500 over REST) and an ERROR with a traceback in the
log, without the caller even being authenticated: an anonymous client could fill the log.

So the services are registered through `register`, which gives every method a deserializer that
turns a failure into an `Undecodable` marker, and a behaviour that answers the marker with
INVALID_ARGUMENT (the project's rich status, naming no internals) before the servicer sees it:
nothing is read or written for it. For a stream of requests the check is made on each one.
The log gets one WARNING line, at most one per `LOG_EVERY_SECONDS`, with how many were refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agenttasks.api.errors import to_status
from agenttasks.core.errors import WHOLE_REQUEST, InvalidArgument, Why

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 60.0
MESSAGE = (
    "could not be decoded as this method's message (truncated bytes, a string that is not UTF-8, "
    "or JSON nested too deeply)"
)


class Undecodable:
    """What the deserializer gives for bytes it could not decode."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _LogLimit:
    def __init__(self) -> None:
        self._next = 0.0
        self._held = 0

    def note(self, method: str, why: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._next = now + LOG_EVERY_SECONDS
        more = f" (and {held} more since the last such line)" if held else ""
        log.warning("refused an undecodable request to %s: %s%s", method, why[:200], more)


_LIMIT = _LogLimit()


def _decoder(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # any failure here is the caller's bytes, not a bug of ours
            return Undecodable(f"{type(error).__name__}: {error}")

    return decode


Context = grpc.aio.ServicerContext[Any, Any]


async def _refuse(context: Context, method: str, request: Undecodable) -> None:
    _LIMIT.note(method, request.why)
    status = to_status(InvalidArgument.field(WHOLE_REQUEST, MESSAGE, Why.UNDECODABLE))
    await context.abort(status.code, status.details, status.trailing_metadata)


def guard(method: str, handler: Any) -> Any:
    """`handler` with a deserializer that cannot fail and a behaviour that refuses what it
    could not decode."""
    fields: dict[str, Any] = {"request_deserializer": _decoder(handler.request_deserializer)}
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def checked_unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(context, method, request)
            return await unary_unary(request, context)

        fields["unary_unary"] = checked_unary_unary
    elif handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def checked_unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, method, request)
            async for response in unary_stream(request, context):
                yield response

        fields["unary_stream"] = checked_unary_stream
    elif handler.stream_stream is not None:
        stream_stream = handler.stream_stream

        async def checked_stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, Undecodable):
                        await _refuse(context, method, request)
                    yield request

            async for response in stream_stream(checked(), context):
                yield response

        fields["stream_stream"] = checked_stream_stream
    else:  # stream_unary: no such method in the API; keep grpcio's own handling
        return handler
    return handler._replace(**fields)


class _Registrar:
    """Stands in for the server in a generated `add_*Servicer_to_server`, guarding its methods."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the same methods come again, by name, to `add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        guarded = {name: guard(f"/{service}/{name}", handler) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        self._server.add_registered_method_handlers(service, guarded)  # type: ignore[attr-defined]


def register(add: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server) -> None:
    """`add(servicer, server)` (a generated `add_*Servicer_to_server`), with every method guarded."""
    add(servicer, _Registrar(server))
