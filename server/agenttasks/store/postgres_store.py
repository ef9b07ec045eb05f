"""PostgresStore: the backend for a server (or several) on one PostgreSQL database.

psycopg 3 with psycopg_pool, its synchronous API on threads: write functions and read functions
call their transaction view synchronously, so each runs on a thread that may wait for
PostgreSQL, never on the event loop. Writes go through `PostgresWriter` (one connection, one
function at a time, group commit); reads run on a few reader threads, each borrowing a
connection of the reader pool for one REPEATABLE READ, READ ONLY transaction (one snapshot per
read function, as SQLite's readers have). Several servers may share the database: each commit
is announced to the others with NOTIFY, and `follow_others` LISTENs (postgres_news).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from agenttasks.core.errors import AgentNotFound, DomainError, StoreUnreachable, TaskNotFound
from agenttasks.core.ports import Neighbours, ReadTx, WriteTx
from agenttasks.store import postgres_news, postgres_url, shown_url
from agenttasks.store.errors import StoreUnavailable
from agenttasks.store.postgres_migrations import has_schema, migrate
from agenttasks.store.postgres_news import channel_for, new_origin
from agenttasks.store.postgres_tx import Connection, PostgresReadTx
from agenttasks.store.postgres_writer import DEFAULT_MAX_BATCH, PostgresWriter, WriterStats

T = TypeVar("T")

DEFAULT_READERS = 3
# How long opening waits for a first connection, and a read for a free one, before failing.
CONNECT_TIMEOUT_SECONDS = 10.0
POOL_TIMEOUT_SECONDS = 5.0
# While PostgreSQL is unreachable, how often to try it again.
PROBE_SECONDS = 0.5

log = logging.getLogger(__name__)


def _connection_lost(error: BaseException) -> bool:
    """Whether `error` says PostgreSQL itself is out of reach (not merely this statement)."""
    if isinstance(error, PoolTimeout | psycopg.InterfaceError):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    # None: the connection broke with no answer; 08: connection exception; 57P: shutdown.
    return state is None or state.startswith(("08", "57P"))


_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
"""What a read or write may meet that a retry can fix: the connection, a deadlock, a lock wait."""


# The referenced key in a foreign-key violation's detail: `Key (a, b)=(x, y) is not present...`.
_MISSING_KEY = re.compile(r"^Key \(([^)]*)\)=\((.*)\) is not present in table")


def _vanished(error: psycopg.errors.ForeignKeyViolation) -> DomainError | None:
    """The domain error for a row that referenced one deleted meanwhile by another server: an
    agent deleted through one replica while a Submit for it was being written through another
    (the agent was read without a lock, and the task's INSERT finds it gone)."""
    match = _MISSING_KEY.match(error.diag.message_detail or "")
    if match is None:
        return None
    values = dict(zip(match.group(1).split(", "), match.group(2).split(", "), strict=False))
    if error.diag.table_name == "tasks" and "agent_id" in values:
        return AgentNotFound(values["agent_id"])
    if error.diag.table_name == "task_events" and "task_id" in values:
        return TaskNotFound(values["task_id"])
    return None


def redact(url: str) -> str:
    """The URL without its password, to show in messages (`shown_url`, for the libpq form)."""
    return shown_url(postgres_url(url) or url)


def _configure(conn: Connection) -> None:
    # Times come back in UTC (psycopg then gives them timezone.utc), whatever the server's or the
    # role's default zone.
    conn.execute("SET TIME ZONE 'UTC'")
    # psycopg prepares a statement on its fifth run, and PostgreSQL may then keep one generic
    # plan for it. That plan is kept on purpose: planning every run (force_custom_plan, as
    # before) cost ~40% of PostgreSQL's CPU per task. The lookups by id that a generic plan made
    # on nearly empty tables got wrong are written so that it cannot (see postgresql.sql).


def _connect(url: str) -> Connection:
    conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=int(CONNECT_TIMEOUT_SECONDS))
    try:
        _configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _pool(url: str, size: int, name: str) -> ConnectionPool[Connection]:
    return ConnectionPool(
        url,
        connection_class=psycopg.Connection[dict[str, Any]],
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": int(CONNECT_TIMEOUT_SECONDS)},
        configure=_configure,
        min_size=1,
        max_size=size,
        open=False,
        name=name,
        timeout=POOL_TIMEOUT_SECONDS,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _prepare(url: str, create: bool) -> str:
    """Checks that the database can be reached and migrates it (blocking); returns the schema
    the store's tables are in."""
    try:
        conn = _connect(url)
    except psycopg.OperationalError as error:
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: {_first_line(error)}") from None
    with conn:
        try:
            if not create and not has_schema(conn):
                raise StoreUnavailable(
                    f"no agenttasks schema in the PostgreSQL database {redact(url)}: pass the --db that "
                    "'agenttasks serve' uses (or set AGENTTASKS_DB); serve creates the schema on first start"
                )
            migrate(conn)
            row = conn.execute("SELECT current_schema() AS schema").fetchone()
        except (psycopg.Error, RuntimeError) as error:
            raise StoreUnavailable(
                f"cannot set up the agenttasks schema in {redact(url)}: {_first_line(error)}"
            ) from None
    return str(row["schema"]) if row else "public"


class PostgresStore:
    """The `Store` over one PostgreSQL database. Open with `await PostgresStore.open(url)`."""

    def __init__(
        self,
        url: str,
        writer_pool: ConnectionPool[Connection],
        reader_pool: ConnectionPool[Connection],
        *,
        readers: int = DEFAULT_READERS,
        max_batch: int = DEFAULT_MAX_BATCH,
        schema: str = "public",
    ) -> None:
        """Takes over two open pools on a migrated database; `open` is the way to get them."""
        self.url = url
        self.channel = channel_for(schema)
        self.origin = new_origin()
        self._writer_pool = writer_pool
        self._reader_pool = reader_pool
        self._writer = PostgresWriter(writer_pool, max_batch=max_batch, announce=(self.channel, self.origin))
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="agenttasks-pg-reader")
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        # Why PostgreSQL is out of reach, while it is: calls fail at once instead of each
        # waiting for a connection, and a probe tries it again (`available`).
        self._down: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self._neighbours: Neighbours | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        create: bool = True,
        readers: int = DEFAULT_READERS,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> PostgresStore:
        """Connects to the database `url` names and migrates it. With `create=False` a database
        that has no agenttasks schema yet is refused (StoreUnavailable) instead of given one."""
        if readers < 1 or max_batch < 1:
            raise ValueError("readers and max_batch must be at least 1")
        schema = await asyncio.to_thread(_prepare, url, create)
        writer_pool = _pool(url, 1, "agenttasks-writer")
        reader_pool = _pool(url, readers, "agenttasks-readers")
        try:
            await asyncio.to_thread(_open_pools, url, writer_pool, reader_pool)
        except BaseException:
            await asyncio.to_thread(_close_pools, writer_pool, reader_pool)
            raise
        return cls(url, writer_pool, reader_pool, readers=readers, max_batch=max_batch, schema=schema)

    def stats(self) -> WriterStats:
        """Write counters, e.g. to show that concurrent writes share commits."""
        return self._writer.stats()

    @property
    def available(self) -> bool:
        """False from a lost connection until PostgreSQL answers again (health shows it)."""
        return self._down is None

    async def read(self, fn: Callable[[ReadTx], T]) -> T:
        self._check_open()
        self._check_up()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._run_read, fn)
        except _TRANSIENT as error:
            raise self._unreachable(error) from None

    async def write(self, fn: Callable[[WriteTx], T]) -> T:
        self._check_open()
        self._check_up()
        try:
            return await self._writer.submit(fn)
        except _TRANSIENT as error:
            raise self._unreachable(error) from None
        except psycopg.errors.ForeignKeyViolation as error:
            if (vanished := _vanished(error)) is None:
                raise
            raise vanished from None

    def _check_up(self) -> None:
        if self._down is not None:
            raise StoreUnreachable(f"the database is unreachable ({self._down}); retry shortly")

    def _unreachable(self, error: BaseException) -> StoreUnreachable:
        """The error a caller gets for `error`; a lost connection also starts the probe."""
        reason = _first_line(error)
        if _connection_lost(error) and self._down is None and not self._closed:
            self._down = reason
            log.warning(
                "PostgreSQL at %s is unreachable (%s); failing calls until it answers", redact(self.url), reason
            )
            self._probe = asyncio.ensure_future(self._probe_until_up())
        return StoreUnreachable(f"the database is unreachable or busy ({reason}); retry shortly")

    async def _probe_until_up(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
                async with conn:
                    await conn.execute("SELECT 1")
            except (psycopg.Error, OSError):
                continue
            # Connections the pools hold may have broken meanwhile: replace them before any
            # call can meet one and take the store down again.
            await asyncio.to_thread(_check_pools, self._writer_pool, self._reader_pool)
            log.warning("PostgreSQL at %s answers again", redact(self.url))
            self._down = None
            if self._neighbours is not None:  # work that failed meanwhile is tried again
                self._neighbours.may_have_missed()
            return

    async def follow_others(self, neighbours: Neighbours, stopping: asyncio.Event) -> None:
        """`SharedStore`: hear the other servers' commits on a connection of its own."""
        self._check_open()
        self._neighbours = neighbours
        await postgres_news.follow(
            self.url, self.channel, self.origin, neighbours, stopping, int(CONNECT_TIMEOUT_SECONDS)
        )

    async def close(self) -> None:
        """Finishes queued writes and reads, then closes every connection. Safe to call twice;
        a second caller waits for the first close to finish."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the store {redact(self.url)} is closed")

    def _run_read(self, fn: Callable[[ReadTx], T]) -> T:
        with self._reader_pool.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            tx = PostgresReadTx(conn)
            try:
                return fn(tx)
            finally:
                tx.detach()
                # Read only: nothing to keep. A broken connection is the pool's to replace.
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")

    async def _shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._writer.close()
        await asyncio.to_thread(self._readers.shutdown, True)
        await asyncio.to_thread(_close_pools, self._writer_pool, self._reader_pool)


def _open_pools(url: str, *pools: ConnectionPool[Connection]) -> None:
    for pool in pools:
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except PoolTimeout:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: no connection in time") from None


def _check_pools(*pools: ConnectionPool[Connection]) -> None:
    for pool in pools:
        pool.check()


def _close_pools(*pools: ConnectionPool[Connection]) -> None:
    for pool in pools:
        pool.close()


__all__ = ["PostgresStore", "WriterStats", "redact"]
