"""`agenttasks serve --metrics-port --gateway-metrics-port` as a real process, and a taken port."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest

from agenttasks.app import Service, StartupError
from tests.cli.support import Spawned, free_port
from tests.observe.scraping import parse, value
from tests.support import make_settings


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as page:  # noqa: S310 - a test's own server
        body: bytes = page.read()
        return body.decode()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_prints_both_metrics_urls_and_serves_them(tmp_path: Path) -> None:
    ports = ["--metrics-port", str(free_port()), "--gateway-metrics-port", str(free_port())]
    server = Spawned("serve", "--db", str(tmp_path / "x.db"), "--grpc-port", "0", "--http-port", "0", *ports)
    try:
        ours = server.wait_for_stdout(re.compile(r"^agenttasks metrics on (http://\S+/metrics)$")).group(1)
        envoy = server.wait_for_stdout(re.compile(r"^agenttasks gateway metrics on (http://\S+/stats/prometheus)$"))
        samples = parse(get(ours))
        assert value(samples, "agenttasks_tasks_submitted_total") == 0
        assert value(samples, "agenttasks_store_webhook_deliveries_pending") == 0
        assert any(name.startswith("envoy_") for name, _ in parse(get(envoy.group(1))))
    finally:
        assert server.stop() == 0, server.stderr


@pytest.mark.asyncio
async def test_a_taken_metrics_port_is_one_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port} for metrics"):
            await Service(make_settings(tmp_path / "x.db", metrics_port=port)).start()
