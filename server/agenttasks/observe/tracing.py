"""OpenTelemetry traces of a task's whole life, optional and free when off.

One trace per task: the Submit's RPC span (continuing a W3C `traceparent` the client sent, or
starting a trace), its store write, its dispatch (on whichever replica assigns it), the worker's
handling, each report, and each webhook delivery attempt. What joins them is the Submit's span
context, stored with the task (`Task.traceparent`, `Task.tracestate`) and carried from there in
the assignment, in each report and in each webhook's `traceparent` header.

Off by default. `setup_from_env` turns it on when the standard OpenTelemetry variables ask for
traces (docs/operations.md says which) and the `otel` extra is installed; without the extra it
warns once and everything here stays a no-op. Until then nothing imports OpenTelemetry: every
entry point first checks one module global and returns a shared no-op, so the hot path of a
server without tracing costs a function call per RPC. The W3C strings still pass through when
tracing is off here (`child_of`), so a worker or replica that does trace joins the trace of one
that stored it.

Spans are made by this module's own tracer (from the provider given to `use`), not the global
one, so tests can collect them in memory without touching process-wide state.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
INSTALL_HINT = "tracing needs the otel extra: pip install 'agenttasks[otel]'"
# OTEL_TRACES_EXPORTER values this module can build an exporter for.
EXPORTERS = ("otlp", "console")

# A W3C trace context as (traceparent, tracestate); ("", "") for none.
Trace = tuple[str, str]
Attributes = Mapping[str, str | int | float | bool]
NO_TRACE: Trace = ("", "")

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_propagator: TraceContextTextMapPropagator | None = None
# With tracing off: the trace context being continued (from a stored task or an assignment), so
# that it still reaches a program's TRACEPARENT, a report or a webhook header unchanged.
_passing: contextvars.ContextVar[Trace] = contextvars.ContextVar("agenttasks_trace", default=NO_TRACE)


class Span:
    """A span being recorded, or (this base class) none: every method is then a no-op."""

    def set(self, key: str, value: str | int | float | bool) -> None:
        """Set an attribute."""

    def fail(self, description: str) -> None:
        """Mark the span as failed (an error status), e.g. a webhook answered 500."""

    def end(self, error: BaseException | None = None) -> None:
        """End the span; with `error`, record it and mark the span failed."""


class _Live(Span):
    def __init__(self, span: OtelSpan) -> None:
        self.span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        self.span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        from opentelemetry.trace import StatusCode

        self.span.set_status(StatusCode.ERROR, description)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.span.record_exception(error)
            self.fail(f"{type(error).__name__}: {error}")
        self.span.end()


NO_SPAN = Span()


class _NoSpan(contextlib.AbstractContextManager[Span]):
    """A reusable block with no span: one shared instance, so tracing off allocates nothing."""

    def __enter__(self) -> Span:
        return NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN_BLOCK = _NoSpan()


def enabled() -> bool:
    """Whether spans are being recorded in this process."""
    return _tracer is not None


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER as a list (it may name several, comma-separated); [] when unset."""
    return [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if n.strip()]


def _vetoed(environ: Mapping[str, str]) -> bool:
    """OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: off, whatever else asks for traces."""
    names = _exporter_names(environ)
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return disabled or (bool(names) and all(n == "none" for n in names))


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces: OTEL_TRACES_EXPORTER set to
    an exporter (not `none`), or an OTLP endpoint given; never with OTEL_SDK_DISABLED=true."""
    if _vetoed(environ):
        return False
    if _exporter_names(environ):
        return True
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_from_env(service_name: str, *, force: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the OTEL_* variables ask for it (or `force`, a setting, unless they
    forbid it); True if it is on.

    The exporter, its endpoint, headers and timeout, the sampler, the batch processor's delays
    and the resource come from the usual OTEL_* variables, read by the SDK itself; `service_name`
    is used unless OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
    Without the `otel` extra this logs an install hint and leaves tracing off.
    """
    # OTEL_* are OpenTelemetry's own settings, which its SDK reads from the environment itself;
    # they are looked at here only to decide whether to load the SDK at all.
    env = os.environ if environ is None else environ
    if _tracer is not None:
        return True
    if _vetoed(env) or not (force or wanted(env)):
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("%s; traces are off", INSTALL_HINT)
        return False
    exporters: list[SpanExporter] = []
    named: list[str] = []
    for name in dict.fromkeys(_exporter_names(env) or ["otlp"]):
        if name == "console":
            exporters.append(ConsoleSpanExporter())
            named.append(name)
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("%s; traces are off", INSTALL_HINT)
                return False
            exporters.append(OTLPSpanExporter())  # OTLP/HTTP protobuf, configured by OTEL_EXPORTER_OTLP_*
            named.append(name)
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER: %r is not supported here (only %s); ignored", name, ", ".join(EXPORTERS))
    if not exporters:
        log.warning("OTEL_TRACES_EXPORTER names no exporter agenttasks has (%s); traces are off", ", ".join(EXPORTERS))
        return False
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    log.info("traces on: service %s, exporter %s", resource.attributes.get(SERVICE_NAME), ", ".join(named))
    return True


def use(provider: TracerProvider | None) -> None:
    """Record spans with `provider` from now on (None: stop). Tests pass one with an in-memory
    exporter; `setup_from_env` passes the one it built."""
    global _tracer, _provider, _propagator
    if provider is None:
        _tracer = _provider = _propagator = None
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from agenttasks import __version__

    _propagator = TraceContextTextMapPropagator()
    _provider = provider
    _tracer = provider.get_tracer("agenttasks", __version__)


def shutdown() -> None:
    """Export what is still buffered and stop (a process about to exit). Safe to call twice."""
    provider = _provider
    use(None)
    if provider is not None:
        provider.shutdown()


def _context(trace: Trace) -> Any:
    """The OTel context whose parent is `trace` (an empty context, not the current one, when the
    strings are missing or invalid: a new trace then starts)."""
    from opentelemetry.context import Context

    assert _propagator is not None  # noqa: S101 - only called while tracing is on
    carrier = {TRACEPARENT: trace[0]}
    if trace[1]:
        carrier[TRACESTATE] = trace[1]
    return _propagator.extract(carrier, context=Context())


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind[kind.upper()]


def current() -> Trace:
    """The W3C strings of the current span (or, with tracing off, of the trace being continued),
    to store with a task or send on: ("", "") when there is none."""
    if _propagator is None:
        return _passing.get()
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT, ""), carrier.get(TRACESTATE, "")


def headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) headers for the current span, or {} without one."""
    parent, state = current()
    if not parent:
        return {}
    return {TRACEPARENT: parent, TRACESTATE: state} if state else {TRACEPARENT: parent}


def server_span(
    method: str, metadata: Callable[[], Iterable[tuple[str, str | bytes]] | None]
) -> contextlib.AbstractContextManager[Span]:
    """The span of one RPC `method` ("/pkg.Service/Method"), continuing the trace of the call's
    `traceparent` metadata (Envoy passes the REST header on as that). `metadata` is only called
    with tracing on."""
    if _tracer is None:
        return _NO_SPAN_BLOCK
    trace = NO_TRACE
    for key, value in metadata() or ():
        if isinstance(value, str) and key.lower() == TRACEPARENT:
            trace = (value, trace[1])
        elif isinstance(value, str) and key.lower() == TRACESTATE:
            trace = (trace[0], value)
    service, _, name = method.strip("/").rpartition("/")
    return _span(
        method.strip("/"),
        _context(trace),
        "server",
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def annotate(attributes: Attributes) -> None:
    """Set attributes on the current span (e.g. the status an RPC failed with); a no-op without one."""
    if _tracer is None:
        return
    from opentelemetry import trace as otel_trace

    otel_trace.get_current_span().set_attributes(attributes)


def span(name: str, attributes: Attributes | None = None) -> contextlib.AbstractContextManager[Span]:
    """A span under the current one, made current for the block (a no-op with tracing off)."""
    if _tracer is None:
        return _NO_SPAN_BLOCK
    return _span(name, None, "internal", attributes)


def child_of(
    trace: Trace, name: str, kind: str = "internal", attributes: Attributes | None = None
) -> contextlib.AbstractContextManager[Span]:
    """A span continuing `trace` (a task's stored context, an assignment's), current for the block.

    No span without a trace to continue, so tasks submitted without tracing do not scatter root
    spans. With tracing off `trace` is still passed on: `current()` returns it in the block."""
    if _tracer is None:
        return _passing_on(trace)
    if not trace[0]:
        return _NO_SPAN_BLOCK
    return _span(name, _context(trace), kind, attributes)


@contextlib.contextmanager
def _passing_on(trace: Trace) -> Iterator[Span]:
    token = _passing.set(trace)
    try:
        yield NO_SPAN
    finally:
        _passing.reset(token)


@contextlib.contextmanager
def _span(name: str, context: Any, kind: str, attributes: Mapping[str, Any] | None) -> Iterator[Span]:
    assert _tracer is not None  # noqa: S101 - callers checked
    with _tracer.start_as_current_span(name, context=context, kind=_kind(kind), attributes=attributes) as otel:
        yield _Live(otel)


def start(
    trace: Trace,
    name: str,
    kind: str = "internal",
    attributes: Attributes | None = None,
    start_time: datetime | None = None,
) -> Span:
    """A span continuing `trace`, not made current; call `end` on it. A no-op without tracing or
    without a trace to continue. For spans that do not fit a block: the reports of one batch,
    which end together when their write commits."""
    if _tracer is None or not trace[0]:
        return NO_SPAN
    at = None if start_time is None else int(start_time.timestamp() * 1e9)
    return _Live(_tracer.start_span(name, _context(trace), _kind(kind), attributes, start_time=at))


def record(
    trace: Trace,
    name: str,
    attributes: Attributes | None = None,
    start_time: datetime | None = None,
) -> Trace:
    """A span continuing `trace` from `start_time` to now (something that already happened, like a
    dispatch once its write committed); the W3C strings of that span, for what follows it. With
    tracing off, or no trace, `trace` itself."""
    if _tracer is None or not trace[0]:
        return trace
    recorded = start(trace, name, attributes=attributes, start_time=start_time)
    assert isinstance(recorded, _Live)  # noqa: S101 - tracing is on and there is a trace
    from opentelemetry import trace as otel_trace

    carrier: dict[str, str] = {}
    assert _propagator is not None  # noqa: S101
    _propagator.inject(carrier, context=otel_trace.set_span_in_context(recorded.span))
    recorded.end()
    return carrier.get(TRACEPARENT, ""), carrier.get(TRACESTATE, "")
