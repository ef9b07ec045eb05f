"""Envoy's own statistics, in Prometheus text, through the real gateway's stats listener, and
nothing else of its admin interface there."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.gateway import Gateway
from tests.observe.scraping import parse, value
from tests.support import make_settings

pytestmark = pytest.mark.asyncio


async def test_envoy_stats_are_served_as_prometheus_text_and_no_other_admin_path(tmp_path: Path) -> None:
    async with (
        Service(make_settings(tmp_path / "agenttasks.db")) as service,
        Gateway("127.0.0.1", 0, "127.0.0.1", service.port, stats=("127.0.0.1", 0)) as gateway,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert gateway.stats_port != 0 and gateway.stats_url.endswith("/stats/prometheus")
        key = await create_api_key(service.store, "default", Role.CLIENT)
        for _ in range(3):
            listed = await http.get(f"{gateway.url}/agent/list", headers={"x-api-key": key})
            assert listed.status_code == 200, listed.text

        answer = await http.get(gateway.stats_url)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        samples = parse(answer.text)  # the Prometheus parser accepts the whole page
        requests = value(samples, "envoy_http_downstream_rq_total", envoy_http_conn_manager_prefix="rest")
        assert requests is not None and requests >= 3
        calls = value(samples, "envoy_cluster_upstream_rq_total", envoy_cluster_name="agenttasks")
        assert calls is not None and calls >= 3

        # The rest of admin (config dumps, drain, quit, log levels) is not reachable here...
        base = gateway.stats_url.removesuffix("/stats/prometheus")
        for method, path in [
            ("GET", "/stats"),
            ("GET", "/config_dump"),
            ("GET", "/clusters"),
            ("POST", "/quitquitquit"),
            ("POST", "/logging?level=trace"),
            ("POST", "/stats/prometheus"),
        ]:
            refused = await http.request(method, base + path)
            assert refused.status_code == 404, (method, path)
        # ... nor are the stats on the public REST port.
        assert (await http.get(f"{gateway.url}/stats/prometheus")).status_code == 404
        assert not gateway.exited.done()
