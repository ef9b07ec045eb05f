"""Structured logs: one JSON object per line (or plain text for a terminal), the fields of the
call being handled on every line, an access log line per RPC, and no secret in any of them.

- Call fields (tenant, agent_id, task_id, worker_id, request_id, trace_id, ...) live in a
  `ContextVar`: grpc.aio runs each call in a task of its own, so what `bind` sets while handling
  a call is seen by every line logged in that task and in the tasks it starts, and by no other
  call. Background loops start outside any call and log without them.
- The access log (`agenttasks.access`, INFO) writes one line per RPC when it ends (a stream at
  its end) with method, gRPC code, duration and credential id. `RpcLog` is what the one wrapper
  every RPC goes through (api/gate.py) holds open around the call. It is on by default with
  JSON and off with text; when off it costs one cached level check per call.
- Secrets: the code never logs credentials on purpose, and every message and traceback is
  scrubbed of anything shaped like an API key, JWT, bearer token, webhook secret or signature
  on the way out, so a mistake elsewhere (an exception that quotes a header) does not leak one.

Deliberately the standard `logging` module and `json`: a JSON formatter is a few lines, and every
library that logs through `logging` (grpc, psycopg) comes out in the same form for free.
This module does not import grpc, so the core may `bind` fields too.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType, TracebackType
from typing import IO, Any, Final, Protocol

from agenttasks.observe import tracing

ACCESS_LOGGER: Final = "agenttasks.access"
ENVOY_ACCESS_LOGGER: Final = "envoy.access"
access_log = logging.getLogger(ACCESS_LOGGER)
envoy_access_log = logging.getLogger(ENVOY_ACCESS_LOGGER)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


_NONE: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("agenttasks_log_fields", default=_NONE)


def bind(**fields: str) -> None:
    """Add fields to every line logged from here on in this call (empty values are skipped).

    Copy on write: a task started earlier keeps the fields it had, and a caller never sees a
    change a task it started makes.
    """
    given = {key: value for key, value in fields.items() if value}
    if given:
        _fields.set({**_fields.get(), **given})


def current_fields() -> Mapping[str, str]:
    """The fields bound in this call so far."""
    return _fields.get()


# --- secrets -------------------------------------------------------------------------------

# What a credential or signature looks like, whatever put it in a message: API keys
# (atk_<id>_<secret>: the id is kept, it names the key), JWTs (three base64url parts, the first
# two JSON objects, so they start with eyJ), bearer values, webhook secrets (whsec_...) and
# Standard Webhooks signatures (v1,<base64 HMAC-SHA256>).
_SECRET = re.compile(
    r"(?P<key>atk_[0-9a-f]{16}_)[A-Za-z0-9_-]+"
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|(?P<bearer>[Bb]earer\s+)[^\s,;\"']+"
    r"|(?P<whsec>whsec_)[A-Za-z0-9+/=_-]+"
    r"|(?P<sig>v1,)[A-Za-z0-9+/]{20,}={0,2}"
)


def _redact(match: re.Match[str]) -> str:
    kept = match.group("key") or match.group("bearer") or match.group("whsec") or match.group("sig") or ""
    return kept + "[redacted]"


def scrub(text: str) -> str:
    """`text` with anything shaped like a credential, secret or signature replaced."""
    return _SECRET.sub(_redact, text)


# --- formatters ------------------------------------------------------------------------------


_second: tuple[int, str] = (0, "")


def _utc(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, as the API's own times. The part up to the second is
    kept from the last line: most lines share it with the one before."""
    global _second  # read and replaced whole: threads racing here at worst each make it
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((created - whole) * 1000):03d}Z"


# One encoder for every line: json.dumps with options builds a new one each call.
_encode = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode


class _CallFieldsFilter(logging.Filter):
    """Stamps each record with the call fields where it is made: formatting may happen later."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call"):
            record.call = _fields.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the call's fields, then the
    record's own `fields` (an access line's method, code, ...), then `error` with a traceback."""

    _CORE = frozenset({"time", "level", "logger", "message"})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        call: Mapping[str, str] = getattr(record, "call", _NONE)
        entry.update(call)
        own: Mapping[str, Any] | None = getattr(record, "fields", None)
        if own:
            entry.update((key, value) for key, value in own.items() if key not in self._CORE)
        if record.exc_info:
            entry["error"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["error"] = scrub(record.exc_text)
        if record.stack_info:
            entry["stack"] = scrub(self.formatStack(record.stack_info))
        return _encode(entry)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        call: Mapping[str, str] = getattr(record, "call", _NONE)
        own: Mapping[str, Any] | None = getattr(record, "fields", None)
        pairs = [*call.items(), *(own.items() if own else ())]
        if pairs:
            line += " " + " ".join(f"{key}={value}" for key, value in pairs if value not in ("", None))
        return scrub(line)

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))


def configure(
    log_format: LogFormat | str = LogFormat.TEXT,
    level: str | int = "info",
    access: bool | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Send every log line to `stream` (stderr) in `log_format`, from `level` up.

    `access`: the access log lines (the server's and Envoy's); None means on with JSON, off
    with text. Replaces whatever handlers the root logger had, so calling it again is safe.
    """
    log_format = LogFormat(log_format)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_CallFieldsFilter())
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every webhook POST with its URL at INFO: the deliverer logs each outcome
    # already, without the URL, which may carry the receiver's own token in its path or query.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    _say["json"] = log_format is LogFormat.JSON
    on = access if access is not None else log_format is LogFormat.JSON
    for logger in (access_log, envoy_access_log):
        # Their own level, so turning them off is one cached check per call.
        logger.setLevel(logging.INFO if on else logging.WARNING)


_say = {"json": False}


def say(line: str, level: int = logging.INFO) -> None:
    """A line the command says about itself on stderr ("agenttasks: draining"): printed as is
    with text logs, a log line (of logger `agenttasks`) with JSON, so that stderr stays all JSON."""
    if _say["json"]:
        logging.getLogger("agenttasks").log(level, "%s", line.removeprefix("agenttasks: "))
    else:
        print(line, file=sys.stderr, flush=True)


def access_on() -> bool:
    """Whether access lines are written (the server's, and so Envoy's too)."""
    return access_log.isEnabledFor(logging.INFO)


# --- one RPC ---------------------------------------------------------------------------------


class CallContext(Protocol):
    """The parts of a `grpc.aio.ServicerContext` this module reads (no grpc import needed)."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...
    def peer(self) -> str: ...
    def code(self) -> Any: ...


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id_from(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` header; "" if it is not one (or all zeros)."""
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return ""
    return match.group(1)


_MAX_ID_CHARS = 128  # a client-chosen id is logged, not a client-sized blob


def _code_name(code: Any) -> str:
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else str(code)


class RpcLog:
    """Held around one RPC: binds its fields, then writes its access line when it ends.

    `request`: the call's request message; its `agent_id`, `task_id` and `request_id` (the
    idempotency key) fields are logged when it has them. From the metadata: `x-request-id`
    (set by Envoy on every REST call, or by the client), the trace id of `traceparent`, and the
    `idempotency-key` header. With tracing on, the trace id is that of the call's span, which the
    gate opens first (it continues `traceparent`, or starts a trace).
    """

    __slots__ = ("_context", "_method", "_previous", "_request", "_started")

    def __init__(self, context: CallContext, method: str, request: object = None) -> None:
        self._context = context
        self._method = method
        self._request = request
        self._started = 0.0
        self._previous: Mapping[str, str] = _NONE

    def __enter__(self) -> RpcLog:
        self._started = time.perf_counter()
        self._previous = _fields.get()
        fields: dict[str, str] = {}
        for key, value in self._context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str):
                fields["request_id"] = value[:_MAX_ID_CHARS]
            elif key == "traceparent" and isinstance(value, str) and (trace := trace_id_from(value)):
                fields["trace_id"] = trace
            elif key == "idempotency-key" and isinstance(value, str):  # what the request_id field also sets
                fields["idempotency_key"] = value[:_MAX_ID_CHARS]
        if tracing.enabled() and (trace := trace_id_from(tracing.current()[0])):
            fields["trace_id"] = trace  # the call's span: its own trace, or the one it continues
        if (request := self._request) is not None:
            for name, key in (("agent_id", "agent_id"), ("task_id", "task_id"), ("request_id", "idempotency_key")):
                if given := getattr(request, name, None):
                    fields[key] = str(given)[:_MAX_ID_CHARS]
        _fields.set(fields)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if access_log.isEnabledFor(logging.INFO):
                self._write(kind)
        finally:
            _fields.set(self._previous)

    def _write(self, kind: type[BaseException] | None) -> None:
        code = self._context.code()
        if code is not None:  # aborted with a status (the gate's errors), or set by the handler
            name = _code_name(code)
        elif kind is None:
            name = "OK"
        elif issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
            name = "CANCELLED"  # the client went or its deadline passed; a stream was closed
        else:
            name = "UNKNOWN"  # escaped the gate, which should not happen
        fields = {
            "method": self._method,
            "code": name,
            "duration_ms": round((time.perf_counter() - self._started) * 1000, 3),
            "peer": self._context.peer(),
        }
        # Made directly rather than by `info`, which would look up the caller's file and line
        # in the stack for every call: the logger name says where an access line comes from.
        record = access_log.makeRecord(
            ACCESS_LOGGER, logging.INFO, "", 0, f"{self._method} {name}", (), None, extra={"fields": fields}
        )
        access_log.handle(record)


def log_envoy_access(line: str) -> bool:
    """Re-log one line of Envoy's JSON access log under `envoy.access`; False if it is not one.

    Envoy writes its access log to the pipe its parent reads (gateway/launcher.py); passing it
    through here gives it the same form, stream and time as every other line.
    """
    if not line.startswith("{"):
        return False
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    if not isinstance(entry, dict):
        return False
    fields = {key: value for key, value in entry.items() if value not in (None, "", "-")}
    for key in ("path", "rpc"):  # what a client wrote in a query string is its own business
        if isinstance(fields.get(key), str):
            fields[key] = scrub(fields[key])
    if trace := trace_id_from(str(fields.pop("traceparent", ""))):
        fields["trace_id"] = trace
    method, path, status = fields.get("method", "-"), fields.get("path", "-"), fields.get("status", "-")
    envoy_access_log.info("%s %s %s", method, path, status, extra={"fields": fields})
    return True
