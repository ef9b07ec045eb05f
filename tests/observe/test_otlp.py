"""`agenttasks serve` and `agenttasks worker` export their spans over OTLP/HTTP as the OTEL_*
variables say, and a REST Submit's `traceparent` header reaches the server through the real
Envoy, is kept with the task, and the worker process and its program continue the trace.

The receiver is a small real OTLP/HTTP endpoint on loopback (POST /v1/traces, protobuf), decoding
what it gets with opentelemetry-proto, as a collector would.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
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

from tests.gateway.serve_process import ADMIN_KEY, COMMAND, GRPC_LISTENING, REST_LISTENING, Serve

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SUBMIT = "agenttasks.v1.TaskService/Submit"
SERVICE_NAME = "agenttasks-otlp-test"
DEADLINE = 30.0
# Nobody else calls this server: no notice period before it stops listening.
QUICK_STOP = {"AGENTTASKS_DRAIN_NOTICE_SECONDS": "0"}
PROGRAM = "import os; print('TRACEPARENT=' + os.environ.get('TRACEPARENT', ''))"


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


def worker_key(db: Path, agent_id: str) -> str:
    made = subprocess.run(
        [*COMMAND, "keys", "create", "--tenant", "default", "--role", "worker", "--agent", agent_id, "--json"],
        env={**clean_env(), "AGENTTASKS_DB": str(db)},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    return str(json.loads(made.stdout)["api_key"])


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("AGENTTASKS_", "OTEL_"))}, **extra}


def by_id(spans: list[tuple[str, OtlpSpan]]) -> dict[bytes, tuple[str, OtlpSpan]]:
    return {span.span_id: (service, span) for service, span in spans}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_and_worker_export_one_trace_over_otlp_from_a_rest_traceparent(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """A REST Submit with a traceparent, through Envoy, to `agenttasks serve`; an `agenttasks
    worker` process running a program does it. Both export OTLP to the receiver."""
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    db = tmp_path / "traced.db"
    serve = Serve(db, "--http-port", "0", env={**otel, "OTEL_SERVICE_NAME": SERVICE_NAME, **QUICK_STOP})
    worker: subprocess.Popen[str] | None = None
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
            worker = subprocess.Popen(
                [
                    *COMMAND,
                    "worker",
                    agent_id,
                    "--server",
                    serve.line(GRPC_LISTENING),
                    "--",
                    sys.executable,
                    "-c",
                    PROGRAM,
                ],
                env=clean_env(AGENTTASKS_API_KEY=worker_key(db, agent_id), **otel),  # service name: the default
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(receiver, "agenttasks.report.complete", 2)
            result = client.get(traced.json()["poll_url"]).json()["result"]["text"]
        worker.send_signal(signal.SIGTERM)  # it exports what it still holds as it stops
        _, errors = worker.communicate(timeout=DEADLINE)
        assert worker.returncode == 0, errors
        wait_for(receiver, "agenttasks.worker.handle", 2)
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.wait() == 0, serve.stderr
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
        serve.close()

    with receiver.lock:
        spans = list(receiver.spans)
    ours = [(service, span) for service, span in spans if span.trace_id.hex() == TRACE_ID]
    named = {span.name: (service, span) for service, span in ours}
    assert set(named) >= {SUBMIT, "agenttasks.store.write", "agenttasks.dispatch", "agenttasks.worker.handle"}
    ids = by_id(ours)
    for service, span in ours:  # one connected trace, hanging off the client's span
        assert span.parent_span_id in ids or span.parent_span_id.hex() == CLIENT_SPAN, (service, span.name)
    submit = named[SUBMIT][1]
    assert submit.parent_span_id.hex() == CLIENT_SPAN  # the REST header reached the server through Envoy
    assert submit.kind == OtlpSpan.SPAN_KIND_SERVER
    handle_service, handle = named["agenttasks.worker.handle"]
    assert handle_service == "agenttasks-worker"  # exported by the worker process itself
    assert ids[handle.parent_span_id][1].name == "agenttasks.dispatch"
    reports = [span for _, span in ours if span.name.startswith("agenttasks.report.")]
    assert {s.name for s in reports} >= {"agenttasks.report.output", "agenttasks.report.complete"}
    assert {s.parent_span_id for s in reports} == {handle.span_id}
    assert {service for service, _ in ours} == {SERVICE_NAME, "agenttasks-worker"}
    assert result.strip() == f"TRACEPARENT=00-{TRACE_ID}-{handle.span_id.hex()}-01"

    # A Submit without a traceparent started a trace of its own; both tasks keep their Submit's
    # span context (and the client's tracestate) for what follows.
    (started,) = [span for _, span in spans if span.name == SUBMIT and span.trace_id.hex() != TRACE_ID]
    assert started.parent_span_id == b""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT message, traceparent, tracestate FROM tasks").fetchall()
    kept = {message: (parent.split("-")[1:3], state) for message, parent, state in rows}
    assert kept == {
        "with a trace": ([TRACE_ID, submit.span_id.hex()], "rest=kept"),
        "without one": ([started.trace_id.hex(), started.span_id.hex()], ""),
    }
