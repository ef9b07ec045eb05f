"""Validation of client input, before anything is written.

Every check names the field as the client spelled it, and all violations of a request are
reported together so a client fixes its request in one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agenttasks.core import field_rules
from agenttasks.core.errors import FieldViolation, InvalidArgument, Why
from agenttasks.core.field_rules import (
    DEFAULT_PRIORITY,
    MAX_PAGE_SIZE,
    MAX_REQUEST_ID_LENGTH,
    MAX_URL_LENGTH,
    REQUEST_ID_CHARS,
    Rule,
)
from agenttasks.core.model import AgentStatus, CallbackMode, JsonObject, TaskStatus


@dataclass(frozen=True, slots=True)
class Limits:
    """Request bounds, taken from Settings by the service."""

    max_message_bytes: int = 256 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8
    max_timeout_seconds: int = 7 * 86400
    # Open WatchTask streams one credential may hold on one server (0: no cap).
    max_watches_per_credential: int = 1000
    # Queued tasks one tenant may have, over all its agents and servers (0: no cap).
    max_queued_per_tenant: int = 100_000

    def rules(self) -> Mapping[str, Rule]:
        """The field rules (agenttasks.core.field_rules) of a server with these limits."""
        return field_rules.field_rules(self.max_message_bytes, self.max_timeout_seconds)


@dataclass(frozen=True, slots=True)
class SubmitSpec:
    """A Submit request that passed validation."""

    message: str
    priority: int
    timeout_override: int | None
    metadata: JsonObject
    callback_mode: CallbackMode
    webhook_url: str
    request_id: str


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str, reason: Why = Why.INVALID_VALUE) -> None:
        self.items.append(FieldViolation(field, description, reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def utf8_size(text: str) -> int:
    """The size of `text` in UTF-8, the unit every text limit is stated in (lone surrogates,
    which JSON can carry, count as the three bytes they take)."""
    return len(text.encode("utf-8", "surrogatepass"))


NUL_REFUSED = "must not contain NUL characters (U+0000)"
"""PostgreSQL's text cannot hold them; refused on every store, so a request means the same on each."""


def _check_text(v: _Violations, field: str, value: str, max_bytes: int) -> None:
    if not value.strip():
        v.add(field, "required and must not be empty", Why.REQUIRED)
    elif utf8_size(value) > max_bytes:
        v.add(field, f"must be at most {max_bytes} bytes", Why.TOO_LONG)
    elif "\x00" in value:
        v.add(field, NUL_REFUSED, Why.NUL_CHARACTER)


def _check_range(v: _Violations, field: str, value: int | None, rule: Rule, unit: str = "") -> None:
    assert rule.minimum is not None and rule.maximum is not None  # noqa: S101 - a range rule
    if value is not None and not rule.minimum <= value <= rule.maximum:
        v.add(field, f"must be between {rule.minimum} and {rule.maximum}{unit}, got {value}", Why.OUT_OF_RANGE)


def _check_optional_text(v: _Violations, field: str, value: str | None, rule: Rule) -> None:
    """A free text field: at most rule.max_length characters, no NUL."""
    assert rule.max_length is not None  # noqa: S101 - a length rule
    if value is None:
        return
    if len(value) > rule.max_length:
        v.add(field, f"must be at most {rule.max_length} characters", Why.TOO_LONG)
    elif "\x00" in value:
        v.add(field, NUL_REFUSED, Why.NUL_CHARACTER)


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value: a scalar is 0, {} or [] is 1. Iterative, so a hostile
    document cannot exhaust the stack."""
    depth, level = 0, [value]
    while True:
        containers = [x for x in level if isinstance(x, dict | list)]
        if not containers:
            return depth
        depth += 1
        level = [c for x in containers for c in (x.values() if isinstance(x, dict) else x)]


def _check_metadata(v: _Violations, field: str, metadata: Any, limits: Limits) -> None:
    if not isinstance(metadata, dict):
        v.add(field, "must be a JSON object", Why.BAD_FORMAT)
        return
    if json_depth(metadata) > limits.max_metadata_depth:
        v.add(field, f"must be nested at most {limits.max_metadata_depth} levels deep", Why.TOO_DEEP)
        return
    size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > limits.max_metadata_bytes:
        v.add(field, f"must be at most {limits.max_metadata_bytes} bytes as JSON, got {size}", Why.TOO_LONG)


def check_request_id(v: _Violations, value: str) -> None:
    if len(value) > MAX_REQUEST_ID_LENGTH:
        v.add("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters", Why.TOO_LONG)
    elif value and not set(value) <= REQUEST_ID_CHARS:
        v.add("request_id", "may hold only letters, digits and - _ . : ~ / + =", Why.BAD_FORMAT)


def check_http_url(value: str) -> str | None:
    """Why value is not an acceptable http(s) URL, or None when it is."""
    if len(value) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "must be a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def validate_submit(
    *,
    message: str,
    priority: int | None,
    timeout_override: int | None,
    metadata: Any,
    callback_mode: str,
    webhook_url: str,
    request_id: str,
    limits: Limits,
) -> SubmitSpec:
    """Check every field of a Submit; raise InvalidArgument listing all that are wrong."""
    v = _Violations()
    rules = limits.rules()
    _check_text(v, "message", message, limits.max_message_bytes)
    _check_range(v, "priority", priority, rules["priority"])
    _check_range(v, "timeout_override", timeout_override, rules["timeout_override"], " seconds")
    _check_metadata(v, "metadata", metadata if metadata is not None else {}, limits)
    mode: CallbackMode | None = None
    try:
        mode = CallbackMode(callback_mode or CallbackMode.POLL)
    except ValueError:
        v.add("callback_mode", f"must be 'poll' or 'webhook', got {callback_mode[:32]!r}", Why.NOT_ALLOWED_VALUE)
    if mode is CallbackMode.WEBHOOK:
        if not webhook_url:
            v.add("webhook_url", "required when callback_mode is 'webhook'", Why.REQUIRED)
        elif (why := check_http_url(webhook_url)) is not None:
            v.add("webhook_url", why, Why.BAD_FORMAT)
    elif mode is CallbackMode.POLL and webhook_url:
        v.add("webhook_url", "only allowed when callback_mode is 'webhook'", Why.CONFLICT)
    check_request_id(v, request_id)
    v.raise_if_any()
    assert mode is not None  # noqa: S101 - a violation was raised otherwise
    return SubmitSpec(
        message=message,
        priority=priority if priority is not None else DEFAULT_PRIORITY,
        timeout_override=timeout_override,
        metadata=metadata if metadata is not None else {},
        callback_mode=mode,
        webhook_url=webhook_url,
        request_id=request_id,
    )


def validate_message(message: str, request_id: str, limits: Limits) -> None:
    """Check a SendMessage body."""
    v = _Violations()
    _check_text(v, "message", message, limits.max_message_bytes)
    check_request_id(v, request_id)
    v.raise_if_any()


def validate_status_filter(status: str) -> TaskStatus | None:
    if not status:
        return None
    try:
        return TaskStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise InvalidArgument.field("status", f"must be one of {allowed}", Why.NOT_ALLOWED_VALUE) from None


def validate_page_size(page_size: int, default: int = 50, maximum: int = MAX_PAGE_SIZE) -> int:
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative", Why.OUT_OF_RANGE)
    return min(page_size or default, maximum)


def validate_agent_fields(
    *,
    name: str | None,
    description: str | None,
    default_timeout_seconds: int | None,
    max_attempts: int | None,
    input_timeout_seconds: int | None,
    metadata: Any,
    limits: Limits,
    creating: bool,
) -> None:
    """Check the settable fields of an agent (all optional on update)."""
    v = _Violations()
    rules = limits.rules()
    if name is not None or creating:
        if not (name or "").strip():
            v.add("name", "required and must not be empty", Why.REQUIRED)
        else:
            _check_optional_text(v, "name", name, rules["name"])
    _check_optional_text(v, "description", description, rules["description"])
    _check_range(v, "default_timeout_seconds", default_timeout_seconds, rules["default_timeout_seconds"])
    _check_range(v, "max_attempts", max_attempts, rules["max_attempts"])
    _check_range(v, "input_timeout_seconds", input_timeout_seconds, rules["input_timeout_seconds"])
    if metadata is not None:
        _check_metadata(v, "metadata", metadata, limits)
    v.raise_if_any()


def validate_agent_status(status: str, status_message: str) -> AgentStatus:
    """Check a status set by hand and its message."""
    v = _Violations()
    wanted: AgentStatus | None = None
    try:
        wanted = AgentStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in AgentStatus)
        v.add("status", f"must be one of {allowed}", Why.NOT_ALLOWED_VALUE)
    _check_optional_text(v, "status_message", status_message, Limits().rules()["status_message"])
    v.raise_if_any()
    assert wanted is not None  # noqa: S101 - a violation was raised otherwise
    return wanted
