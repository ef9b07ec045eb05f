"""A server that cannot be reached is one plain line, the same for the CLI and the worker: where,
why, and what to try, never gRPC's own account (`failed to connect to all addresses; ...`) or a
resolver's dump.

The CLI and worker tests run the real commands against a closed port, a name that cannot resolve
(`.invalid` never does) and a real HTTP server that is not gRPC. The last tests feed
`unreachable` details that cannot be provoked here (a timeout, no route), as grpcio writes them.
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from agenttasks.reach import unreachable

from .support import START_TIMEOUT, Spawned, failed, free_port, run_cli

UNKNOWN_HOST = "nosuchhost.invalid"
NO_KEY_NEEDED = "atk_never_sent"  # the call never leaves this machine


def refused(address: str) -> str:
    return f"cannot reach agenttasks at {address} (connection refused): is 'agenttasks serve' running?"


@pytest.fixture
def http_port() -> Iterator[int]:
    """A real HTTP/1 server: something answers, but not gRPC."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_closed_port_is_one_line_that_names_serve() -> None:
    address = f"127.0.0.1:{free_port()}"
    for command in (["status", str(uuid.uuid4())], ["watch", str(uuid.uuid4())], ["agents", "list"]):
        result = run_cli(*command, "--server", address, "--api-key", NO_KEY_NEEDED)
        assert failed(result, 1) == f"agenttasks: {refused(address)}", command


def test_submit_batch_to_a_closed_port_says_nothing_was_queued() -> None:
    address = f"127.0.0.1:{free_port()}"
    agent = str(uuid.uuid4())
    result = run_cli(
        "submit-batch", agent, "-", "--server", address, "--api-key", NO_KEY_NEEDED, stdin='{"message": "x"}\n'
    )
    # No connection was ever made: the line was certainly not queued (no "may have been").
    assert failed(result, 1) == (
        f"agenttasks: {refused(address)} (line 1 was not queued; none before them was; "
        "lines with a request_id are safe to send again)"
    )


def test_a_host_that_does_not_resolve_is_one_line() -> None:
    result = run_cli("status", str(uuid.uuid4()), "--server", f"{UNKNOWN_HOST}:50051", "--api-key", NO_KEY_NEEDED)
    assert failed(result, 1) == f"agenttasks: cannot resolve host {UNKNOWN_HOST}"


def test_a_server_that_is_not_grpc_is_one_line(http_port: int) -> None:
    address = f"127.0.0.1:{http_port}"
    result = run_cli("status", str(uuid.uuid4()), "--server", address, "--api-key", NO_KEY_NEEDED)
    line = failed(result, 1)
    assert (
        line
        == f"agenttasks: cannot reach agenttasks at {address} (something answers there, but it is not a gRPC server)"
    )


def test_the_address_comes_from_the_details_when_the_caller_has_none() -> None:
    """`describe_rpc_error` without a server (submit-batch calls it so) still names the address."""
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
        "Failed to connect to remote host: Connection refused"
    )
    assert unreachable(details) == refused("127.0.0.1:9")
    assert unreachable(details.replace("127.0.0.1:9", "127.0.0.1:443"), "localhost") == refused("localhost:443")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("server", "expected"),
    [(None, None), (f"{UNKNOWN_HOST}:50051", f"cannot resolve host {UNKNOWN_HOST}")],
    ids=["closed-port", "unknown-host"],
)
def test_the_worker_says_why_it_cannot_connect_in_one_line(server: str | None, expected: str | None) -> None:
    """It keeps retrying (the server may come up), saying why each time, and stops on SIGTERM."""
    if server is None:
        server = f"127.0.0.1:{free_port()}"
        expected = refused(server)
    worker = Spawned("worker", str(uuid.uuid4()), "--server", server, "--api-key", NO_KEY_NEEDED, "--", "cat", env={})
    try:
        line = f"agenttasks worker: {expected}"
        deadline = time.monotonic() + START_TIMEOUT
        while line not in worker.stderr.splitlines():
            assert worker.proc.poll() is None, worker.stderr
            assert time.monotonic() < deadline, f"no {line!r} in:\n{worker.stderr}"
            time.sleep(0.02)
        assert worker.stop() == 0, worker.stderr
    finally:
        worker.kill()
    said = worker.stderr.splitlines()
    complaints = [entry for entry in said if "reconnecting in" not in entry and entry != "agenttasks worker: stopped"]
    assert set(complaints) == {line}, said
    assert worker.stdout == ""


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.1.2.3:50051: "
            "Failed to connect to remote host: Timeout occurred: FD Shutdown",
            "cannot reach agenttasks at 10.1.2.3:50051 (timed out)",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.1.2.3:50051: "
            "Failed to connect to remote host: No route to host",
            "cannot reach agenttasks at 10.1.2.3:50051 (no route to host)",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B2001:db8::1%5D:50051: "
            "Failed to connect to remote host: Network is unreachable",
            "cannot reach agenttasks at [2001:db8::1]:50051 (network unreachable)",
        ),
        (
            "DNS resolution failed for agents.example:50051: C-ares status is not ARES_SUCCESS "
            "qtype=A name=agents.example is_balancer=0: Could not contact DNS servers",
            "cannot resolve host agents.example",
        ),
        (
            "errors resolving a:b:c: [field:hostname lookup error:address lookup failed for a:b:c: "
            "Misformatted domain name]",
            "not a valid server address: a:b:c (expected HOST:PORT)",
        ),
        (
            "failed to connect to all addresses; last error: FAILED_PRECONDITION: unix:/run/at.sock: "
            "connect failed: addr: unix:/run/at.sock error: No such file or directory",
            "cannot reach agenttasks at unix:/run/at.sock (no such socket)",
        ),
        ("Socket closed", "cannot reach agenttasks at the server (socket closed)"),
        (
            "failed to connect to all addresses; last error: INTERNAL: ipv4:10.1.2.3:1: Handshake failed "
            "[field:a very long dump that nobody should read:" + "x" * 300 + "]",
            "cannot reach agenttasks at 10.1.2.3:1 (handshake failed)",
        ),
    ],
    ids=["timeout", "no-route", "network-unreachable", "dns-down", "misformatted", "unix", "closed", "fallback"],
)
def test_details_become_one_short_sentence(details: str, expected: str) -> None:
    assert unreachable(details) == expected
