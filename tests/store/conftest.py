"""Fixtures shared by the store tests: one `store` per backend, on real storage.

The contract suite runs once per entry of BACKENDS. A backend is added by giving `store_url` a
way to make a fresh, empty database for one test: a file in the test's directory for SQLite, a
new database on the local PostgreSQL server (dropped after the test) for PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agenttasks.core.model import Agent, Task
from agenttasks.core.ports import Store
from agenttasks.store import open_store
from tests.support import BACKENDS, PostgresDatabases

__all__ = ["BACKENDS"]

# A fixed, microsecond-precise base time so round-trip assertions exercise the precision.
BASE_TIME = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL naming a fresh, empty database of one backend; reopening it reaches the same data."""
    if request.param == "sqlite":
        # tmp_path is absolute, so this is the four-slash absolute form.
        yield f"sqlite:///{tmp_path / 'agenttasks.db'}"
    elif request.param == "postgresql":
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        with databases.database() as url:
            yield url
    else:
        raise AssertionError(f"no store_url for backend {request.param!r}")


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def at(seconds: float) -> datetime:
    """BASE_TIME plus an offset: readable times with microseconds in them."""
    return BASE_TIME + timedelta(seconds=seconds)


def _make_agent(agent_id: str = "agent-1", tenant: str = "tenant-a", **changes: Any) -> Agent:
    fields: dict[str, Any] = {"name": f"name of {agent_id}", "created_at": at(0), "updated_at": at(0)}
    fields.update(changes)
    return Agent(tenant=tenant, agent_id=agent_id, **fields)


def _make_task(task_id: str, agent_id: str = "agent-1", tenant: str = "tenant-a", **changes: Any) -> Task:
    fields: dict[str, Any] = {"message": f"do {task_id}", "created_at": at(1), "updated_at": at(1)}
    fields.update(changes)
    return Task(tenant=tenant, task_id=task_id, agent_id=agent_id, **fields)


# Served as fixtures rather than imported: test directories are not packages, so `import
# conftest` could pick up another directory's conftest.
@pytest.fixture
def make_agent() -> Callable[..., Agent]:
    return _make_agent


@pytest.fixture
def make_task() -> Callable[..., Task]:
    return _make_task


@pytest.fixture
def when() -> Callable[[float], datetime]:
    return at
