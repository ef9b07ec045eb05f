"""`serve --log-format json` as an operator runs it, with its Envoy, a worker and a webhook
receiver: every line on stderr (the server's, Envoy's, the worker's) is one JSON object with the
required fields, the access lines of both sides are there and share the request id, and no line
holds an API key, a JWT, the JWT or webhook secret, or a signature, also of failed attempts."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from agenttasks.auth.jwt_tokens import issue_token
from agenttasks.v1 import webhook_service_pb2 as wpb
from agenttasks.v1 import webhook_service_pb2_grpc

from .support import START_TIMEOUT, PostgresUrl, Spawned, StartServer, ok, one_line, run_cli

REST_LISTENING = re.compile(r"^agenttasks REST listening on (http://\S+)$")
GRPC_LISTENING = re.compile(r"^agenttasks gRPC listening on (\S+)$")
ADMIN_KEY = re.compile(r"^admin api key: (\S+)$")
JWT_SECRET = "a-jwt-secret-only-this-test-knows-0123456789"
REQUIRED = ("time", "level", "logger", "message")


@contextmanager
def receiver() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP endpoint for webhooks on 127.0.0.1: its URL, and the headers of each POST."""
    received: list[dict[str, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append({key.lower(): value for key, value in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def rest(base: str, method: str, path: str, credential: str, body: object = None, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {credential}", **{k.replace("_", "-"): v for k, v in headers.items()}},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {START_TIMEOUT}s for {what}")
        time.sleep(0.05)


def json_lines(name: str, text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object with the required fields; fails naming the first
    line that is not one."""
    lines: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{name}: a stderr line that is not JSON: {line!r}")
        assert isinstance(entry, dict) and all(entry.get(key) for key in REQUIRED), f"{name}: {line}"
        lines.append(entry)
    return lines


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_json_logs_of_a_whole_run_parse_and_hold_no_secret(store: Path | PostgresUrl) -> None:
    db = str(store)
    serve = Spawned(
        "serve", "--db", db, "--grpc-port", "0", "--http-port", "0", "--log-format", "json",
        "--webhook-allow", "127.0.0.0/8", "--jwt-secret", JWT_SECRET, cwd=store.parent,
    )  # fmt: skip
    worker: Spawned | None = None
    try:
        grpc_address = serve.wait_for_stdout(GRPC_LISTENING).group(1)
        base = serve.wait_for_stdout(REST_LISTENING).group(1)
        admin = serve.wait_for_stdout(ADMIN_KEY).group(1)
        token = issue_token(JWT_SECRET, "default", 600)
        status, agent = rest(base, "POST", "/agent/create", token, {"name": "logged"})
        assert status == 200, agent
        agent_id = agent["agent_id"]
        keys = ["keys", "create", "--tenant", "default", "--db", db]
        client_key = one_line(ok(run_cli(*keys, "--role", "client", cwd=store.parent)))
        worker_key = one_line(ok(run_cli(*keys, "--role", "worker", "--agent", agent_id, cwd=store.parent)))
        with grpc.insecure_channel(grpc_address) as channel:
            hooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)
            webhook_secret = hooks.GetSigningSecret(
                wpb.GetSigningSecretRequest(), metadata=[("authorization", f"Bearer {admin}")]
            ).secret
        assert webhook_secret.startswith("whsec_")

        worker = Spawned(
            "worker", agent_id, "--log-format", "json", "--", "cat",
            env={"AGENTTASKS_SERVER": grpc_address, "AGENTTASKS_API_KEY": worker_key},
        )  # fmt: skip
        with receiver() as (url, received):
            body = {"message": "hello", "callback_mode": "webhook", "webhook_url": url}
            path = f"/agent/request/{agent_id}"
            status, submitted = rest(base, "POST", path, client_key, body, x_request_id="req-42")
            assert status == 202, submitted
            until(lambda: len(received) >= 1, "the signed webhook delivery")
        signatures = [headers["webhook-signature"] for headers in received]
        assert all(s.startswith("v1,") for s in signatures)

        bad_key = client_key[:-8] + "AAAAAAAA"
        bad_jwt = issue_token("another-secret-that-signs-nothing-here-0123", "default", 600)
        for credential in (bad_key, bad_jwt, "atk_0123456789abcdef_" + "z" * 43):
            assert rest(base, "GET", "/agent/list", credential)[0] == 401
        with grpc.insecure_channel(grpc_address) as channel:
            hooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)
            for credential in (bad_key, bad_jwt):
                with pytest.raises(grpc.RpcError):
                    hooks.GetSigningSecret(wpb.GetSigningSecretRequest(), metadata=[("x-api-key", credential)])

        assert worker.stop() == 0, worker.stderr
        assert serve.stop() == 0, serve.stderr
    finally:
        if worker is not None:
            worker.kill()
        serve.kill()

    server_lines = json_lines("serve", serve.stderr)
    worker_lines = json_lines("worker", worker.stderr)
    secrets = {
        "admin key": admin,
        "client key": client_key,
        "worker key": worker_key,
        "bad key": bad_key,
        "JWT": token,
        "bad JWT": bad_jwt,
        "JWT secret": JWT_SECRET,
        "webhook secret": webhook_secret,
        "webhook secret key": webhook_secret.removeprefix("whsec_"),
    }
    for key in (admin, client_key, worker_key, bad_key):
        secrets[f"secret of {key[:21]}"] = key.split("_", 2)[2]
    for n, signature in enumerate(signatures):
        secrets[f"signature {n}"] = signature.split(",", 1)[1]
    secrets["webhook URL"] = url  # a receiver's URL may hold its own token: not logged either
    for name, text in [("serve", serve.stderr), ("worker", worker.stderr + worker.stdout)]:
        for what, secret in secrets.items():
            assert secret not in text, f"{name}'s log holds the {what}"

    app = [line for line in server_lines if line["logger"] == "agenttasks.access"]
    envoy = [line for line in server_lines if line["logger"] == "envoy.access"]
    (submit,) = [line for line in app if line["method"].endswith("/Submit")]
    assert submit["request_id"] == "req-42" and submit["task_id"] == submitted["task_id"]
    assert submit["code"] == "OK" and submit["credential"] == client_key.split("_")[1]
    (front,) = [line for line in envoy if line.get("request_id") == "req-42"]
    assert front["method"] == "POST" and front["path"] == f"/agent/request/{agent_id}" and front["status"] == 202
    assert {"duration_ms", "upstream", "rpc"} <= front.keys()
    refused = [line for line in envoy if line["status"] == 401]
    assert len(refused) == 3 and all(line["method"] == "GET" for line in refused)
    assert any(line["method"].endswith("/Connect") and line.get("worker_id") for line in app)  # at its end
    assert [line["message"] for line in server_lines][-1] == "stopped"
    assert any("connected to" in line["message"] for line in worker_lines)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_agenttasks_gateway_logs_json_with_an_access_line_per_rest_and_grpc_call(
    tmp_path: Path, start_server: StartServer
) -> None:
    replica = start_server(tmp_path / "agenttasks.db")
    address, key = replica.address(), replica.admin_key()
    gateway = Spawned(
        "gateway", "--upstream", address, "--http-port", "0", "--grpc-front-port", "0", "--log-format", "json"
    )
    try:
        base = gateway.wait_for_stdout(REST_LISTENING).group(1)
        front = gateway.wait_for_stdout(re.compile(r"^agenttasks gRPC front listening on (\S+:\d+)$")).group(1)
        assert rest(base, "GET", "/agent/list", key, x_request_id="via-rest")[0] == 200
        with grpc.insecure_channel(front) as channel:
            hooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)
            metadata = [("authorization", f"Bearer {key}"), ("x-request-id", "via-grpc")]
            hooks.GetSigningSecret(wpb.GetSigningSecretRequest(), metadata=metadata)
        assert gateway.stop() == 0, gateway.stderr
    finally:
        gateway.kill()
    lines = json_lines("gateway", gateway.stderr)
    access = {line.get("request_id"): line for line in lines if line["logger"] == "envoy.access"}
    assert access["via-rest"]["path"] == "/agent/list" and access["via-rest"]["status"] == 200
    assert access["via-grpc"]["path"] == "/agenttasks.v1.WebhookService/GetSigningSecret"
    assert access["via-grpc"]["grpc_status"] == "OK" and access["via-grpc"]["upstream"] == address
    assert key.split("_", 2)[2] not in gateway.stderr
    messages = [line["message"] for line in lines]  # Envoy's last access lines may follow "draining"
    assert "draining" in messages and messages[-1] == "stopped"
