"""`agenttasks serve` exports its spans over OTLP/HTTP as the OTEL_* variables say, and a REST
Submit's `traceparent` header reaches the server through the real Envoy and is kept.

The receiver is a small real OTLP/HTTP endpoint on loopback (POST /v1/traces, protobuf), decoding
what it gets with opentelemetry-proto, as a collector would.
"""

from __future__ import annotations

import gzip
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from tests.gateway.serve_process import ADMIN_KEY, REST_LISTENING, Serve

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SUBMIT = "agenttasks.v1.TaskService/Submit"
SERVICE_NAME = "agenttasks-otlp-test"
DEADLINE = 30.0


class OtlpReceiver(ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf trace exports and keeps every span with its service name."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, OtlpSpan]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str) -> list[OtlpSpan]:
        with self.lock:
            return [span for _, span in self.spans if span.name == name]


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_error(404)
            return
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                names = [a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"]
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans += [(names[0] if names else "", span) for span in scope_spans.spans]
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_for(receiver: OtlpReceiver, name: str, count: int) -> list[OtlpSpan]:
    deadline = time.monotonic() + DEADLINE
    while len(found := receiver.named(name)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} {name} spans arrived"
        time.sleep(0.05)
    return found


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_exports_over_otlp_and_keeps_a_rest_traceparent(tmp_path: Path, receiver: OtlpReceiver) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": SERVICE_NAME,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    db = tmp_path / "traced.db"
    serve = Serve(db, "--http-port", "0", env=env)
    try:
        url = serve.line(REST_LISTENING)
        key = serve.line(ADMIN_KEY)
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, trust_env=False) as client:
            agent_id = client.post("/agent/create", json={"name": "traced"}).json()["agent_id"]
            traced = client.post(
                f"/agent/request/{agent_id}",
                json={"message": "with a trace"},
                headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "tracestate": "rest=kept"},
            )
            assert traced.status_code == 202, traced.text
            untraced = client.post(f"/agent/request/{agent_id}", json={"message": "without one"})
            assert untraced.status_code == 202, untraced.text
        submits = wait_for(receiver, SUBMIT, 2)
        writes = wait_for(receiver, "agenttasks.store.write", 2)
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.wait() == 0, serve.stderr
    finally:
        serve.close()

    assert {name for name, _ in receiver.spans} == {SERVICE_NAME}
    continued = [s for s in submits if s.trace_id.hex() == TRACE_ID]
    assert len(continued) == 1, [(s.trace_id.hex(), s.parent_span_id.hex()) for s in submits]
    (submit,) = continued
    assert submit.parent_span_id.hex() == CLIENT_SPAN  # the REST header reached the server through Envoy
    assert submit.kind == OtlpSpan.SPAN_KIND_SERVER
    (started,) = [s for s in submits if s is not submit]
    assert started.parent_span_id == b"" and started.trace_id.hex() != TRACE_ID  # no header: a new trace
    assert {(w.trace_id, w.parent_span_id) for w in writes} == {(s.trace_id, s.span_id) for s in (submit, started)}

    # Each task keeps its Submit's span context (and the client's tracestate) for what follows.
    with sqlite3.connect(db) as conn:
        kept = {
            m: (p.split("-")[1:3], state)
            for m, p, state in conn.execute("SELECT message, traceparent, tracestate FROM tasks")
        }
    assert kept == {
        "with a trace": ([TRACE_ID, submit.span_id.hex()], "rest=kept"),
        "without one": ([started.trace_id.hex(), started.span_id.hex()], ""),
    }
