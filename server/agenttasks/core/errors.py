"""Domain errors. The core raises these; only the transport turns them into statuses.

Each class is one row of the table in `agenttasks.api.errors`, which gives its gRPC code, HTTP
status and stable reason. A test checks that every subclass here has a row.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Why(enum.StrEnum):
    """Stable reasons of field violations (`BadRequest.field_violations[].reason`), for clients
    that act on the kind of mistake; the description says it in words and may change."""

    REQUIRED = "REQUIRED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    TOO_LONG = "TOO_LONG"
    TOO_DEEP = "TOO_DEEP"
    BAD_FORMAT = "BAD_FORMAT"
    NOT_A_UUID = "NOT_A_UUID"
    NOT_ALLOWED_VALUE = "NOT_ALLOWED_VALUE"
    NUL_CHARACTER = "NUL_CHARACTER"
    CONFLICT = "CONFLICTING_FIELDS"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    SET_BY_PATH = "SET_BY_PATH"
    UNDECODABLE = "UNDECODABLE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 - a reason, not a secret
    INVALID_VALUE = "INVALID_VALUE"
    """Any other bad value."""


WHOLE_REQUEST = "request"
"""The field a violation names when the request as a whole is wrong (e.g. it cannot be decoded)."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, named as the client spelled it (snake_case)."""

    field: str
    description: str
    reason: Why = Why.INVALID_VALUE


class DomainError(Exception):
    """Base of all errors a client may see. `message` is safe to show to the caller."""

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request is malformed; nothing was written."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        # "invalid request: could not be decoded", not "invalid request: request: could not ...".
        summary = "; ".join(
            v.description if v.field == WHOLE_REQUEST else f"{v.field}: {v.description}" for v in violations
        )
        super().__init__(f"invalid request: {summary}", metadata={"field": violations[0].field})
        self.violations = violations

    @classmethod
    def field(cls, name: str, description: str, reason: Why = Why.INVALID_VALUE) -> InvalidArgument:
        return cls([FieldViolation(name, description, reason)])

    def within(self, prefix: str) -> InvalidArgument:
        """The same violations, named inside an enclosing field (`requests[3].` + `priority`)."""
        return InvalidArgument([FieldViolation(prefix + v.field, v.description, v.reason) for v in self.violations])


class Unauthenticated(DomainError):
    """No credential, or one that is malformed, expired, revoked or unknown."""


class PermissionDenied(DomainError):
    """The credential is valid but its role may not make this call."""


class AgentNotFound(DomainError):
    """No such agent in the caller's tenant (another tenant's agents answer the same)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id} not found", metadata={"agent_id": agent_id})


class TaskNotFound(DomainError):
    """No such task under that agent in the caller's tenant."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found", metadata={"task_id": task_id})


class AgentUnavailable(DomainError):
    """The agent is paused, stopped or in error, so it takes no new tasks."""

    def __init__(self, agent_id: str, status: str) -> None:
        super().__init__(
            f"agent {agent_id} is {status} and accepts no tasks",
            metadata={"agent_id": agent_id, "agent_status": status},
        )


class TaskFinished(DomainError):
    """The task already reached a terminal status, so it cannot be changed."""

    def __init__(self, task_id: str, status: str, action: str) -> None:
        super().__init__(
            f"cannot {action} task {task_id}: it is already {status}",
            metadata={"task_id": task_id, "task_status": status},
        )


class IdempotencyKeyReused(DomainError):
    """A client key came back with a different request body than the first time."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with a different request; use a new key",
            metadata={"request_id": key},
        )


class DeliveryNotFound(DomainError):
    """No such webhook delivery in the caller's tenant."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"webhook delivery {delivery_id} not found", metadata={"delivery_id": delivery_id})


class LeaseLost(DomainError):
    """A worker reported on a task whose lease it no longer holds; nothing was changed."""


class ShuttingDown(DomainError):
    """The server is draining and takes no new work; retry against another replica or later."""


class StoreUnreachable(DomainError):
    """The database cannot be reached (or refused the work for a moment: a deadlock, a lock
    wait, a restart). Nothing is known to have changed; retry shortly, or through another
    replica. A Submit retried after this may be a second task unless it carries a request_id."""


class CallTimedOut(DomainError):
    """The call took longer than the server allows one call (it may still have taken effect)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the call took longer than the server's limit of {seconds:g} s; it may have taken effect")


class TooManyWatches(DomainError):
    """The credential already holds as many open watch streams as one server allows it."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this credential already has {limit} open watch streams on this server; close one first",
            metadata={"limit": str(limit)},
        )


class TooManyQueued(DomainError):
    """The tenant already has as many queued tasks as the server allows one tenant."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this tenant already has {limit} queued tasks; wait for some to start, or cancel some",
            metadata={"limit": str(limit)},
        )


class RetryLater(DomainError):
    """A refusal that passes: the client is told how long to wait (`retry_after` seconds) in a
    RetryInfo detail and, over REST, a Retry-After header."""

    def __init__(self, message: str, retry_after: float, metadata: dict[str, str] | None = None) -> None:
        seconds = max(retry_after, 0.001)
        super().__init__(message, metadata={**(metadata or {}), "retry_after_seconds": f"{seconds:.3f}"})
        self.retry_after = seconds


class TooManyCalls(RetryLater):
    """The tenant's clients (or workers) already have as many calls running and waiting on this
    server as one tenant may. See `core.call_slots`: the calls ahead take milliseconds each, so
    `retry_after` is short."""

    def __init__(self, limit: int, retry_after: float) -> None:
        super().__init__(
            f"this tenant already has {limit} calls running or waiting on this server; retry in {retry_after:.3g} s",
            retry_after,
            metadata={"limit": str(limit)},
        )


class RateLimited(RetryLater):
    """The credential made more calls than its rate allows; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        seconds = max(retry_after, 0.001)
        super().__init__(f"too many calls with this credential; retry in {seconds:.3g} s", seconds)
