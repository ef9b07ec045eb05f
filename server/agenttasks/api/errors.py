"""The one table from domain errors to gRPC code, HTTP status and stable reason.

The HTTP column is what Envoy's transcoder makes of the gRPC code (GATEWAY-FACTS); a test checks
the two agree, so this table is the single place to read what a client gets. Every error leaves
as a rich `google.rpc.Status` with an `ErrorInfo` (AIP-193) and, for bad input, a `BadRequest`
naming each field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agenttasks.core.errors import (
    AgentNotFound,
    AgentUnavailable,
    CallTimedOut,
    DeliveryNotFound,
    DomainError,
    IdempotencyKeyReused,
    InvalidArgument,
    LeaseLost,
    PermissionDenied,
    RateLimited,
    RetryLater,
    ShuttingDown,
    StoreUnreachable,
    TaskFinished,
    TaskNotFound,
    TooManyCalls,
    TooManyQueued,
    TooManyWatches,
    Unauthenticated,
)

ERROR_DOMAIN = "agenttasks.dev"


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    code: grpc.StatusCode
    http_status: int
    reason: str


ERROR_TABLE: dict[type[DomainError], ErrorMapping] = {
    InvalidArgument: ErrorMapping(grpc.StatusCode.INVALID_ARGUMENT, 400, "INVALID_ARGUMENT"),
    Unauthenticated: ErrorMapping(grpc.StatusCode.UNAUTHENTICATED, 401, "UNAUTHENTICATED"),
    PermissionDenied: ErrorMapping(grpc.StatusCode.PERMISSION_DENIED, 403, "PERMISSION_DENIED"),
    AgentNotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, 404, "AGENT_NOT_FOUND"),
    TaskNotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, 404, "TASK_NOT_FOUND"),
    DeliveryNotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, 404, "DELIVERY_NOT_FOUND"),
    AgentUnavailable: ErrorMapping(grpc.StatusCode.UNAVAILABLE, 503, "AGENT_UNAVAILABLE"),
    TaskFinished: ErrorMapping(grpc.StatusCode.FAILED_PRECONDITION, 400, "TASK_ALREADY_FINISHED"),
    IdempotencyKeyReused: ErrorMapping(grpc.StatusCode.ALREADY_EXISTS, 409, "IDEMPOTENCY_KEY_REUSED"),
    LeaseLost: ErrorMapping(grpc.StatusCode.FAILED_PRECONDITION, 400, "LEASE_LOST"),
    ShuttingDown: ErrorMapping(grpc.StatusCode.UNAVAILABLE, 503, "SHUTTING_DOWN"),
    StoreUnreachable: ErrorMapping(grpc.StatusCode.UNAVAILABLE, 503, "STORE_UNAVAILABLE"),
    RateLimited: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "RATE_LIMITED"),
    TooManyWatches: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "TOO_MANY_WATCHES"),
    TooManyQueued: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "TOO_MANY_QUEUED"),
    TooManyCalls: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "TOO_MANY_CALLS"),
    CallTimedOut: ErrorMapping(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "DEADLINE_EXCEEDED"),
}

# Anything not a DomainError: a bug. The client gets a generic message; the log gets the trace.
INTERNAL = ErrorMapping(grpc.StatusCode.INTERNAL, 500, "INTERNAL")
INTERNAL_MESSAGE = "internal error; it has been logged"


def mapping_for(error: BaseException) -> ErrorMapping:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rich_status(error: BaseException) -> status_pb2.Status:
    """`error` as a google.rpc.Status with ErrorInfo (and BadRequest for bad input)."""
    mapping = mapping_for(error)
    if isinstance(error, DomainError):
        message, metadata = error.message, error.metadata
    else:
        message, metadata = INTERNAL_MESSAGE, {}
    details = [_pack(error_details_pb2.ErrorInfo(reason=mapping.reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.reason)
            for v in error.violations
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(error, RetryLater):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(retry))
    return status_pb2.Status(code=getattr(code_pb2, mapping.code.name), message=message, details=details)


def to_status(error: BaseException) -> grpc.Status:
    """The rich status a client receives for `error`, ready for `context.abort`."""
    status: grpc.Status = rpc_status.to_status(rich_status(error))
    if isinstance(error, RetryLater):
        # Whole seconds, as HTTP's Retry-After has them; Envoy passes it on as a header.
        wait = str(max(1, math.ceil(error.retry_after)))
        status = _Status(status.code, status.details, (*status.trailing_metadata, ("retry-after", wait)))
    return status


@dataclass(frozen=True, slots=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]
