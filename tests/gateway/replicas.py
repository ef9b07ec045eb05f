"""Several replicas of the service on one store with one gateway in front, as `agenttasks gateway`
runs them: for the tests of round robin, health checks, retries and the native gRPC front.

Each replica is a real `Service` (grpc.aio on a free port) in this process; all of them use the
same PostgreSQL database, as replicas do (a SQLite file has one server). The gateway is the
project's own launcher running the real Envoy. What Envoy decided (which replica is in rotation, how many calls each
took, how many were retried) is read from its admin endpoint, which only the test can reach.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from agenttasks.app import Service
from agenttasks.gateway import Gateway, Upstream
from tests.support import make_settings

DEADLINE = 20.0
"""How long a test waits for Envoy to notice something (its health checks run every second)."""


@asynccontextmanager
async def replica(db: Path, port: int = 0) -> AsyncIterator[Service]:
    """One replica over the shared store, on `port` (0: a free one); stopped (drained) at the end."""
    service = Service(make_settings(db, grpc_port=port))
    try:
        await service.start()
        yield service
    finally:
        await service.stop()


@asynccontextmanager
async def replicas(db: Path, count: int) -> AsyncIterator[list[Service]]:
    """`count` replicas over one store, started one after another (the first start migrates the
    store and makes the first-start admin key; the others find both done)."""
    started: list[Service] = []
    try:
        for _ in range(count):
            service = Service(make_settings(db))
            started.append(service)
            await service.start()
        yield started
    finally:
        for service in started:
            await service.stop()


@asynccontextmanager
async def front(services: list[Service]) -> AsyncIterator[Gateway]:
    """The gateway `agenttasks gateway` runs, REST and the gRPC front on free ports."""
    upstreams = [("127.0.0.1", service.port) for service in services]
    async with Gateway("127.0.0.1", 0, upstreams=upstreams, grpc_front=("127.0.0.1", 0)) as gateway:
        yield gateway


async def upstream(gateway: Gateway, service: Service) -> Upstream:
    """How Envoy sees this replica now."""
    for found in await gateway.upstream_status():
        if found.address == f"127.0.0.1:{service.port}":
            return found
    raise AssertionError(f"replica on port {service.port} is not behind the gateway")


async def until(condition: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    """Wait for `condition` to hold, failing after `deadline` seconds: a deadline, not a timing
    claim (Envoy decides on its own schedule)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not await condition():
        assert loop.time() < give_up, f"not within {deadline:g}s: {what}"
        await asyncio.sleep(0.05)


async def cluster_stats(gateway: Gateway, prefix: str = "upstream_rq_retry") -> dict[str, int]:
    """Envoy's counters of the replicas' cluster starting with `prefix`, e.g. the retries:
    {"upstream_rq_retry": 3, "upstream_rq_retry_success": 3, ...}."""
    async with httpx.AsyncClient(base_url=f"http://{gateway.admin_address}", trust_env=False) as admin:
        response = await admin.get("/stats", params={"filter": f"^cluster\\.agenttasks\\.{prefix}"})
    response.raise_for_status()
    return {
        name: int(value)
        for name, value in re.findall(r"^cluster\.agenttasks\.(\S+): (\d+)$", response.text, flags=re.MULTILINE)
    }
