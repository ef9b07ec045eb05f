"""The PostgreSQL the bench runs on (`--db postgresql://user@host:port/dbname`): a fresh database
for each workload, dropped afterwards, and the CPU of the backends that serve it.

The URL names a database the bench only connects to (to create and drop its own); every
workload gets `<dbname>_bench_<pid>_<workload>`, so a run never touches existing data, and
`sweep` drops whatever of this run is left (after a failure, Ctrl-C or SIGTERM). A `kill -9` of
the harness leaves its databases behind: `stale` lists those of runs whose process is gone.

CPU: PostgreSQL runs a process per connection. `BackendCpu` asks `pg_stat_activity` which
backends are connected to a database, several times a second, and reads their CPU from
`/proc/<pid>/stat` (as `bench.procs` does for our own processes; this needs the same user as
the server's processes, or root). The instance's shared background processes (WAL writer,
checkpointer, background writer) serve every database of the instance; they are reported
apart, as `pg_shared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.procs import CLK_TCK

POLL_SECONDS = 0.2
SHARED_BACKENDS = ("walwriter", "checkpointer", "background writer")
_MAX_IDENTIFIER = 63


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as error:
        raise SystemExit(f"--db postgresql:// needs psycopg ({error}): pip install -e '.[postgres]'") from None
    return psycopg


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def shown(url: str) -> str:
    """The URL without its password, for logs and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, dbname: str) -> str:
    """`url` naming database `dbname` instead (query and credentials kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid`, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(slots=True)
class Postgres:
    """The instance named by `--db`, and the databases this run made on it."""

    url: str
    prefix: str = ""
    """Every database of this run starts with this: `<dbname>_bench_<pid>_`."""
    made: set[str] = field(default_factory=set)
    keep: bool = False
    """`--keep`: leave the databases for a look afterwards (their names are printed)."""

    def __post_init__(self) -> None:
        base = urlsplit(self.url).path.lstrip("/") or "postgres"
        base = re.sub(r"[^a-z0-9_]", "_", base.lower())
        self.prefix = f"{base}_bench_{os.getpid()}_"

    async def _admin(self) -> Any:
        psycopg = _psycopg()
        return await psycopg.AsyncConnection.connect(self.url, autocommit=True)

    def name_for(self, workload: str) -> str:
        name = self.prefix + re.sub(r"[^a-z0-9_]", "_", workload.lower())
        if len(name) > _MAX_IDENTIFIER:
            raise ValueError(f"database name too long for PostgreSQL: {name}")
        return name

    async def create(self, workload: str) -> str:
        """A fresh, empty database for `workload`; returns its URL."""
        name = self.name_for(workload)
        sql = _psycopg().sql
        async with await self._admin() as admin:
            await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.made.add(name)
        return with_database(self.url, name)

    async def drop(self, name: str) -> None:
        sql = _psycopg().sql
        async with await self._admin() as admin:
            await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.made.discard(name)

    @contextlib.asynccontextmanager
    async def database(self, workload: str) -> AsyncIterator[str]:
        """A fresh database for the block, dropped after it however it ends (kept with `keep`)."""
        url = await self.create(workload)
        try:
            yield url
        finally:
            if not self.keep:
                # Shielded: a cancelled workload (time limit, Ctrl-C) still drops its database.
                await asyncio.shield(self.drop(self.name_for(workload)))

    def sweep(self) -> list[str]:
        """Drop every database of this run that is still there (synchronously: called on the way
        out, after the event loop is gone). Returns their names."""
        psycopg = _psycopg()
        sql = psycopg.sql
        with psycopg.connect(self.url, autocommit=True) as admin:
            like = self.prefix.replace("_", r"\_") + "%"
            names = [row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,))]
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.made.clear()
        return names

    def stale(self) -> list[str]:
        """Databases of earlier runs on this host whose harness is gone (a `kill -9`): listed, not dropped."""
        psycopg = _psycopg()
        base = self.prefix.rsplit("_bench_", 1)[0]
        pattern = re.compile(re.escape(base) + r"_bench_(\d+)_")
        with psycopg.connect(self.url, autocommit=True) as admin:
            names = [row[0] for row in admin.execute("SELECT datname FROM pg_database")]
        return [n for n in names if (m := pattern.match(n)) and not Path(f"/proc/{m.group(1)}").exists()]

    def describe(self) -> dict[str, Any]:
        """Version and the settings that decide a commit's cost, for the report."""
        psycopg = _psycopg()
        names = ["server_version", "synchronous_commit", "fsync", "wal_sync_method", "shared_buffers"]
        with psycopg.connect(self.url, autocommit=True) as admin:
            rows = admin.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,))
            settings = dict(rows.fetchall())
        return {"url": shown(self.url), **settings}


class BackendCpu:
    """CPU seconds used over a window by the backends connected to `dbname` (role `postgres`)
    and by the instance's shared background processes (role `pg_shared`).

    Polled: a backend that starts within the window counts from zero (its start-up is in the
    window anyway); one that ends within it counts up to its last poll, so up to `POLL_SECONDS`
    of its CPU can be missed. The servers under test keep their connections open, so this is rare.
    """

    def __init__(self, postgres: Postgres, dbname: str) -> None:
        self.postgres = postgres
        self.dbname = dbname
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._shared: dict[int, tuple[float, float]] = {}
        self._role: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._admin: Any = None

    async def _poll_once(self, first: bool) -> None:
        rows = await self._admin.execute(
            "SELECT pid, datname, backend_type FROM pg_stat_activity WHERE datname = %s OR backend_type = ANY(%s)",
            (self.dbname, list(SHARED_BACKENDS)),
        )
        for pid, datname, _ in await rows.fetchall():
            seconds = proc_cpu_seconds(pid)
            if seconds is None:
                continue
            if pid not in self._first:
                # Present at the start: count from now. Appeared later: count all of it.
                self._first[pid] = seconds if first else 0.0
                self._role[pid] = "postgres" if datname == self.dbname else "pg_shared"
            self._last[pid] = seconds

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self._poll_once(first=False)

    async def start(self) -> None:
        self._admin = await self.postgres._admin()
        await self._poll_once(first=True)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> dict[str, float]:
        """{role: CPU seconds in the window}; safe to call twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._poll_once(first=False)
            await self._admin.close()
            self._admin = None
        used = {"postgres": 0.0, "pg_shared": 0.0}
        for pid, first in self._first.items():
            used[self._role[pid]] += self._last[pid] - first
        return used

    def backends(self) -> int:
        """How many backends of the database were seen."""
        return sum(1 for role in self._role.values() if role == "postgres")
