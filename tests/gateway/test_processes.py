"""Envoy as a process: several gateways side by side, clean failures on a taken port, and
`agenttasks serve` with its gateway as a real process that never leaves an Envoy behind."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.gateway import Gateway, GatewayError, launcher
from tests.gateway.serve_process import (
    ADMIN_KEY,
    GRPC_LISTENING,
    REST_LISTENING,
    Serve,
    children,
    free_port,
    is_gone,
    wait_until_gone,
)
from tests.gateway.support import http_client


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.close()


# --- in-process launcher ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_several_gateways_run_side_by_side(service: Service, key: str) -> None:
    first = Gateway("127.0.0.1", 0, "127.0.0.1", service.port)
    second = Gateway("127.0.0.1", 0, "127.0.0.1", service.port)
    async with first, second:
        assert first.port != second.port and first.pid != second.pid
        for gateway in (first, second):
            async with http_client(gateway, {"x-api-key": key}) as client:
                assert (await client.get("/agent/list")).status_code == 200
        await first.stop()
        await first.stop()  # safe twice
        assert first.exited.result() == 0
        async with http_client(second, {"x-api-key": key}) as client:
            assert (await client.get("/v1/agent/list")).status_code == 200
    assert second.exited.done()


@pytest.mark.asyncio
async def test_drain_tells_clients_to_go_and_waits_for_open_calls(service: Service, key: str) -> None:
    async with Gateway("127.0.0.1", 0, upstreams=[("127.0.0.1", service.port)]) as gateway:
        assert await gateway.drain(5) == 0  # nothing open: at once
        async with http_client(gateway, {"x-api-key": key}) as client:
            agent = (await client.post("/agent/create", json={"name": "drained"})).json()["agent_id"]
            task = (await client.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
            async with client.stream("GET", f"/agent/{agent}/task/{task}/watch") as watch:
                events = watch.aiter_raw()
                await anext(events)  # the snapshot: the watch is open
                assert await gateway.drain(0.2) == 1  # a watch does not end by itself: stop cuts it
                await events.aclose()
            answer = await client.get("/agent/list")
            assert answer.status_code == 200 and answer.headers["connection"] == "close", answer.headers


@pytest.mark.asyncio
async def test_a_taken_port_fails_before_envoy_starts(service: Service, taken_port: int) -> None:
    gateway = Gateway("127.0.0.1", taken_port, "127.0.0.1", service.port)
    with pytest.raises(GatewayError) as raised:
        await gateway.start()
    assert str(raised.value) == f"cannot listen on 127.0.0.1:{taken_port} for REST: Address already in use"
    assert gateway.pid is None


@pytest.mark.asyncio
async def test_envoy_failing_at_start_is_one_clear_error(
    service: Service, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port check passes when the port is taken right after it: Envoy's own bind error counts.
    monkeypatch.setattr(launcher, "check_port", lambda host, port: None)
    gateway = Gateway("127.0.0.1", taken_port, "127.0.0.1", service.port)
    with pytest.raises(GatewayError) as raised:
        await gateway.start()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("REST gateway (Envoy) exited with code 1: [critical]"), message
    assert f"cannot bind '127.0.0.1:{taken_port}': Address already in use" in message, message
    assert gateway.pid is not None and is_gone(gateway.pid)


# --- agenttasks serve --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_prints_the_rest_address_serves_it_and_sigterm_stops_envoy(tmp_path: Path, serves: list[Serve]) -> None:
    port = free_port()
    serve = Serve(tmp_path / "a.db", "--http-port", str(port))
    serves.append(serve)
    url = serve.line(REST_LISTENING)
    assert url == f"http://127.0.0.1:{port}"
    key = serve.line(ADMIN_KEY)
    envoy = serve.envoy_pid()

    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, trust_env=False) as client:
        agent = client.post("/agent/create", json={"name": "from-curl"})
        assert agent.status_code == 200, agent.text
        submitted = client.post(f"/agent/request/{agent.json()['agent_id']}", json={"message": "hi"})
        assert submitted.status_code == 202, submitted.text
        polled = client.get(submitted.json()["poll_url"])  # the advertised URL works as given
        assert polled.status_code == 200 and polled.json()["status"] == "queued", polled.text

    serve.proc.send_signal(signal.SIGTERM)
    assert serve.wait() == 0, serve.stderr
    assert "agenttasks: stopped" in serve.stderr and "Traceback" not in serve.stderr, serve.stderr
    assert is_gone(envoy)
    with socket.socket() as probe:  # the REST port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_envoy_does_not_outlive_a_killed_serve(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path / "a.db", "--http-port", "0")
    serves.append(serve)
    serve.line(REST_LISTENING)
    envoy = serve.envoy_pid()
    argv = Path(f"/proc/{envoy}/cmdline").read_bytes().split(b"\0")
    runtime_dir = Path(argv[argv.index(b"--config-path") + 1].decode()).parent
    serve.proc.send_signal(signal.SIGKILL)
    serve.wait()
    wait_until_gone(envoy)
    assert not runtime_dir.exists()  # removed once Envoy was ready: nothing is left behind


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_stops_loudly_when_envoy_dies(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path / "a.db", "--http-port", "0")
    serves.append(serve)
    serve.line(REST_LISTENING)
    os.kill(serve.envoy_pid(), signal.SIGKILL)
    assert serve.wait() == 1
    assert "agenttasks: stopping: REST gateway (Envoy) was killed by SIGKILL" in serve.stderr, serve.stderr
    assert "agenttasks: stopped" in serve.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_taken_rest_port_fails_with_one_line_and_keeps_the_first_start_key(
    tmp_path: Path, serves: list[Serve], taken_port: int
) -> None:
    db = tmp_path / "a.db"
    refused = Serve(db, "--http-port", str(taken_port))
    serves.append(refused)
    assert refused.wait() != 0
    assert refused.err == [f"agenttasks: cannot listen on 127.0.0.1:{taken_port} for REST: Address already in use"]
    assert "listening" not in refused.stdout and "admin api key" not in refused.stdout

    started = Serve(db, "--http-port", "0")  # the database's first start is still to come
    serves.append(started)
    assert started.line(ADMIN_KEY).startswith("atk_")
    started.line(REST_LISTENING)
    started.proc.send_signal(signal.SIGTERM)
    assert started.wait() == 0, started.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_no_gateway_runs_grpc_alone(tmp_path: Path, serves: list[Serve]) -> None:
    serve = Serve(tmp_path / "a.db", "--no-gateway")
    serves.append(serve)
    serve.line(GRPC_LISTENING)
    serve.line(ADMIN_KEY)
    assert "envoy" not in children(serve.proc.pid).values()
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.wait() == 0, serve.stderr
    assert "REST" not in serve.stdout
