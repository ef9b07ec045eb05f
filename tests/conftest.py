"""Shared fixtures: a real agenttasks service on a free port over a real SQLite file.

`service` starts the full gRPC server in-process (grpc.aio on port 0); `admin` and `client` are
real channels with real API keys; `other_tenant` is a client of another tenant, for isolation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from tests.support import Api, api_for, make_settings


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agenttasks.db"


@pytest_asyncio.fixture
async def service(db_path: Path) -> AsyncIterator[Service]:
    async with Service(make_settings(db_path)) as svc:
        yield svc


@pytest_asyncio.fixture
async def connect(service: Service) -> AsyncIterator[Callable[[str], Api]]:
    opened: list[Api] = []

    def _connect(credential: str, header: str = "authorization") -> Api:
        api = api_for(service.address, credential, header)
        opened.append(api)
        return api

    yield _connect
    for api in opened:
        await api.channel.close()


@pytest_asyncio.fixture
async def admin(service: Service, connect: Callable[[str], Api]) -> Api:
    assert service.bootstrap_key is not None
    return connect(service.bootstrap_key)


@pytest_asyncio.fixture
async def client(service: Service, connect: Callable[[str], Api]) -> Api:
    return connect(await create_api_key(service.store, "default", Role.CLIENT))


@pytest_asyncio.fixture
async def other_tenant(service: Service, connect: Callable[[str], Api]) -> Api:
    return connect(await create_api_key(service.store, "other", Role.CLIENT))


@pytest_asyncio.fixture
async def agent_id(client: Api) -> str:
    return await client.create_agent("test-agent")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real processes, restarts)")
