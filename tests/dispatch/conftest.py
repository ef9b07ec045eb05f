"""Fixtures for worker tests: a service with short leases and fast sweeps, and worker keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from tests.dispatch.raw_worker import RawWorker
from tests.support import make_settings

LEASE_SECONDS = 1.0
SWEEP_SECONDS = 0.05


@pytest_asyncio.fixture
async def service(db_path: Path) -> AsyncIterator[Service]:
    """The real service, with leases short enough that losing one takes a second."""
    settings = make_settings(db_path, lease_seconds=LEASE_SECONDS, sweep_seconds=SWEEP_SECONDS)
    async with Service(settings) as svc:
        yield svc


@pytest_asyncio.fixture
async def worker_key(service: Service) -> str:
    return await create_api_key(service.store, "default", Role.WORKER)


@pytest_asyncio.fixture
async def workers(service: Service, worker_key: str) -> AsyncIterator[Callable[..., Awaitable[RawWorker]]]:
    started: list[RawWorker] = []

    async def start(
        agent_id: str, capacity: int = 1, heartbeat: bool = True, key: str | None = None, batches: bool = False
    ) -> RawWorker:
        worker = RawWorker(service.address, key or worker_key, agent_id, capacity, heartbeat, batches)
        started.append(worker)
        return await worker.start()

    yield start
    for worker in started:
        await worker.close()
