"""`agenttasks gateway` as a real process in front of real `agenttasks serve --no-gateway`
replicas sharing one PostgreSQL database (a SQLite file has one server): the lines it prints,
REST and native gRPC through it, a replica that stops answering taken out of rotation and back,
clean stops, and one clear line for each way it can be started wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.serve_process import children, wait_until_gone
from tests.support import PostgresDatabases

from .support import PostgresUrl, Spawned, StartServer, failed, free_port, ok, run_cli

REST_LISTENING = re.compile(r"^agenttasks REST listening on (http://\S+)$")
GRPC_FRONT_LISTENING = re.compile(r"^agenttasks gRPC front listening on (\S+:\d+)$")
UPSTREAMS = re.compile(r"^agenttasks upstreams (.+)$")


@pytest.fixture
def gateways() -> Iterator[list[Spawned]]:
    """`agenttasks gateway` processes, each killed at the end of the test whatever happens."""
    started: list[Spawned] = []
    yield started
    for process in started:
        process.kill()


def envoy_of(process: Spawned) -> int:
    (envoy,) = [pid for pid, name in children(process.proc.pid).items() if name == "envoy"]
    return envoy


def stderr_line(process: Spawned, pattern: re.Pattern[str]) -> re.Match[str]:
    """The first stderr line (a log line) that `pattern` finds, waiting for it: Envoy's health
    checks decide on their own schedule, so this is a deadline, not a timing claim."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in process.stderr.splitlines():
            if match := pattern.search(line):
                return match
        assert process.proc.poll() is None, process.stderr
        time.sleep(0.05)
    pytest.fail(f"no {pattern.pattern!r} on stderr in 30s\n{process.stderr}")


@pytest.fixture
def shared_db(postgres_databases: PostgresDatabases, tmp_path: Path) -> Iterator[PostgresUrl]:
    """The replicas' one database: PostgreSQL, as several servers need."""
    with postgres_databases.database() as url:
        yield PostgresUrl(url, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_one_front_serves_rest_and_grpc_for_two_replicas_and_stops_on_sigterm(
    shared_db: PostgresUrl, start_server: StartServer, gateways: list[Spawned]
) -> None:
    rest_port = free_port()
    base_url = f"http://127.0.0.1:{rest_port}"  # where clients reach REST: the gateway
    db = shared_db
    first = start_server(db, "--public-base-url", base_url)
    first_address, key = first.address(), first.admin_key()
    second = start_server(db, "--public-base-url", base_url)  # the same store: no new key
    second_address = second.address()

    upstreams = f"{first_address},{second_address}"
    gateway = Spawned("gateway", "--upstream", upstreams, "--http-port", str(rest_port), "--grpc-front-port", "0")
    gateways.append(gateway)
    assert gateway.wait_for_stdout(REST_LISTENING).group(1) == base_url
    front = gateway.wait_for_stdout(GRPC_FRONT_LISTENING).group(1)
    assert gateway.wait_for_stdout(UPSTREAMS).group(1) == f"{first_address}, {second_address}"
    assert front.startswith("127.0.0.1:") and not front.endswith(":0")
    envoy = envoy_of(gateway)

    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, trust_env=False) as client:
        created = client.post("/agent/create", json={"name": "behind-the-gateway"})
        assert created.status_code == 200, created.text
        agent = created.json()["agent_id"]
        submitted = client.post(f"/agent/request/{agent}", json={"message": "hi"})
        assert submitted.status_code == 202, submitted.text
        polled = client.get(submitted.json()["poll_url"])  # the replicas' links name the gateway
        assert polled.status_code == 200 and polled.json()["status"] == "queued", polled.text

    # gRPC clients use the front too: here the CLI itself.
    listed = run_cli("agents", "list", "--json", env={"AGENTTASKS_SERVER": front, "AGENTTASKS_API_KEY": key})
    assert [found["agent_id"] for found in json.loads(ok(listed))] == [agent]

    assert gateway.stop() == 0, gateway.stderr
    assert gateway.stderr.splitlines()[-2:] == ["agenttasks: draining", "agenttasks: stopped"], gateway.stderr
    assert "Traceback" not in gateway.stderr, gateway.stderr
    wait_until_gone(envoy)
    with socket.socket() as probe:  # the REST port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", rest_port))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_replica_that_stops_answering_leaves_the_rotation_and_comes_back(
    shared_db: PostgresUrl, start_server: StartServer, gateways: list[Spawned]
) -> None:
    db = shared_db
    first = start_server(db)
    first_address, key = first.address(), first.admin_key()
    second = start_server(db)
    second_address = second.address()
    upstreams = f"{first_address},{second_address}"  # from the environment this time
    gateway = Spawned("gateway", "--http-port", "0", "--grpc-front-port", "0", env={"AGENTTASKS_UPSTREAM": upstreams})
    gateways.append(gateway)
    url = gateway.wait_for_stdout(REST_LISTENING).group(1)

    second.proc.send_signal(signal.SIGSTOP)  # alive, port open, but answering nothing
    try:
        out = stderr_line(gateway, re.compile(rf"replica {re.escape(second_address)} is out of rotation \((.+)\)"))
        assert "its health check timed out" in out.group(1), out.group(0)
        with httpx.Client(base_url=url, headers={"x-api-key": key}, trust_env=False, timeout=30) as client:
            answers = [client.get("/agent/list") for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    finally:
        second.proc.send_signal(signal.SIGCONT)
    stderr_line(gateway, re.compile(rf"replica {re.escape(second_address)} is in rotation"))
    assert gateway.stop() == 0, gateway.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_gateway_stops_loudly_when_envoy_dies(tmp_path: Path, gateways: list[Spawned]) -> None:
    # No replica needs to answer for Envoy to run: the upstream is only checked, not required.
    gateway = Spawned("gateway", "--upstream", f"127.0.0.1:{free_port()}", "--http-port", "0", "--grpc-front-port", "0")
    gateways.append(gateway)
    gateway.wait_for_stdout(GRPC_FRONT_LISTENING)
    os.kill(envoy_of(gateway), signal.SIGKILL)
    assert gateway.wait() == 1
    assert "agenttasks: stopping: REST gateway (Envoy) was killed by SIGKILL" in gateway.stderr, gateway.stderr
    assert "Traceback" not in gateway.stderr


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        (None, "no upstream given: name the gRPC replicas as HOST:PORT[,HOST:PORT...]"),
        ("127.0.0.1", "bad upstream '127.0.0.1': expected HOST:PORT, e.g. 127.0.0.1:50051"),
        ("127.0.0.1:0", "bad upstream '127.0.0.1:0': the port must be a number from 1 to 65535"),
        ("127.0.0.1:50051,,127.0.0.1:50052", "an empty entry between commas"),
        ("::1:50051", "write an IPv6 address in brackets, e.g. [::1]:50051"),
        ("no-such-replica.invalid:50051", "upstream no-such-replica.invalid:50051: cannot resolve"),
        ("127.0.0.1:50051,0.0.0.0:50051", "are the same replica (127.0.0.1:50051)"),
    ],
)
def test_a_bad_upstream_is_one_clear_line_and_exit_2(upstream: str | None, message: str) -> None:
    args = ["gateway", "--http-port", "0"] + ([] if upstream is None else ["--upstream", upstream])
    line = failed(run_cli(*args), 2)
    assert line.startswith("agenttasks: ") and message in line, line
    assert line.endswith("(see 'agenttasks gateway --help')"), line


def test_a_bad_upstream_from_the_environment_is_refused_the_same_way() -> None:
    line = failed(run_cli("gateway", env={"AGENTTASKS_UPSTREAM": "replica-a"}), 2)
    assert "bad upstream 'replica-a': expected HOST:PORT" in line, line


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-front-port"])
def test_a_taken_port_is_one_clear_line(flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--grpc-front-port" if flag == "--http-port" else "--http-port"
        line = failed(run_cli("gateway", "--upstream", "127.0.0.1:50051", flag, str(port), other, "0"), 1)
    what = "REST" if flag == "--http-port" else "the gRPC front"
    assert line == f"agenttasks: cannot listen on 127.0.0.1:{port} for {what}: Address already in use"
