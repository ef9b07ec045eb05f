"""Shared fixtures: a real agenttasks service on a free port over a real database.

`db_path` names the test's database, once per storage backend: a SQLite file, and a fresh
PostgreSQL database on the local server (dropped after the test). Every fixture and test that
builds a service or store from it therefore runs against both backends. `service` starts the
full gRPC server in-process (grpc.aio on port 0); `admin` and `client` are real channels with
real API keys; `other_tenant` is a client of another tenant, for isolation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from tests.support import BACKENDS, Api, PostgresDatabases, api_for, make_settings


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Makes fresh PostgreSQL databases from a template migrated once per session."""
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(params=BACKENDS)
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """The test's store, as `--db` would name it: a SQLite file that does not exist yet, or the
    URL of a new PostgreSQL database with the schema (dropped after the test, even on failure)."""
    if request.param == "sqlite":
        yield tmp_path / "agenttasks.db"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    with databases.database() as url:
        yield url


@pytest_asyncio.fixture
async def service(db_path: Path | str) -> AsyncIterator[Service]:
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
