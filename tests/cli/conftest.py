"""Fixtures for the CLI tests: `serve` processes that never outlive a test, and a `cli` runner.

The helpers themselves live in `support.py` (test modules import them from there).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support import BACKENDS, PostgresDatabases

from .support import CLI_TIMEOUT, Cli, PostgresUrl, Server, ServerProcess, StartServer, run_cli, serving


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """A factory for `serve` processes; every one it started is killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(db: Path, *extra: str, env: Mapping[str, str | None] | None = None) -> ServerProcess:
        server = ServerProcess(db, *extra, env=env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path | PostgresUrl:
    """A store of the test's own for `serve` processes it starts and restarts itself: a SQLite
    file that does not exist yet, or a new PostgreSQL database (dropped after the test)."""
    if request.param == "sqlite":
        return tmp_path / "agenttasks.db"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    request.addfinalizer(lambda: databases.drop(url))
    return PostgresUrl(url, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def server_process(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `serve` on a free port and a fresh database, shared by the tests of a module: once
    on a SQLite file, once on a new PostgreSQL database (dropped with the module)."""
    directory = tmp_path_factory.mktemp("serve")
    if request.param == "sqlite":
        with serving(directory / "agenttasks.db") as process:
            yield process
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    with databases.database() as url, serving(PostgresUrl(url, directory)) as process:
        yield process


@pytest.fixture(scope="module")
def server(server_process: ServerProcess) -> Server:
    return Server(server_process.address(), server_process.admin_key(), server_process.db)


@pytest.fixture(scope="module")
def cli(server: Server) -> Cli:
    """`cli(*args, env=..., api_key=...)`: run a command against the module's server.

    AGENTTASKS_SERVER and AGENTTASKS_API_KEY (the admin key unless `api_key` is given) are set;
    `env` adds to or (with None values) removes from that. The working directory is the
    server's, so a command that falls back to ./agenttasks.db finds the same file; on
    PostgreSQL, AGENTTASKS_DB names the server's database instead.
    """

    def run(
        *args: str,
        env: Mapping[str, str | None] | None = None,
        api_key: str | None = None,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        merged: dict[str, str | None] = {
            "AGENTTASKS_SERVER": server.address,
            "AGENTTASKS_API_KEY": api_key if api_key is not None else server.admin_key,
        }
        if isinstance(server.db_path, PostgresUrl):  # what ./agenttasks.db is to a SQLite server
            merged["AGENTTASKS_DB"] = str(server.db_path)
        merged.update(env or {})
        return run_cli(*args, env=merged, cwd=server.db_path.parent, timeout=timeout)

    return run
