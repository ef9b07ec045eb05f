"""SqliteStore: the embedded default backend.

One file in WAL mode, `synchronous=FULL` so an acknowledged write survives power loss. One
writer connection group-commits (see `sqlite_writer`: its write functions run in batches on the
event loop, its BEGIN and COMMIT on a commit thread, so the loop never waits for a lock or a
disk), and a few reader threads, each with its own read-only connection, which WAL lets read a
committed snapshot while the writer writes: reads can be long (lists, event pages) and run
concurrently, so they stay off the loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from agenttasks.core.ports import ReadTx, WriteObserver, WriteTx
from agenttasks.store.errors import StoreUnavailable
from agenttasks.store.migrations import migrate
from agenttasks.store.sqlite_tx import SqliteReadTx
from agenttasks.store.sqlite_writer import GroupCommitWriter, WriterStats

T = TypeVar("T")

# How long a connection waits for another process's lock (a second server on the same file, an
# admin shell) before failing with "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0
DEFAULT_READERS = 3
DEFAULT_MAX_BATCH = 512


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection configured the way every connection of the store must be.

    isolation_level=None hands transaction control to us (BEGIN IMMEDIATE, SAVEPOINT) instead
    of the sqlite3 module's implicit BEGINs. check_same_thread=False because the store opens
    connections on one thread and uses and closes them on another, never two at once.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        if read_only:
            # Read functions get a ReadTx only; this makes a mistake there fail, not write.
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writer_connection(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # E.g. a filesystem without shared memory: readers would block the writer.
            raise RuntimeError(f"SQLite could not switch {path} to WAL mode (got {mode!r})")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteStore:
    """The `Store` over one SQLite file. Open with `await SqliteStore.open(path)`."""

    def __init__(
        self,
        path: Path,
        writer_conn: sqlite3.Connection,
        *,
        readers: int = DEFAULT_READERS,
        max_batch: int = DEFAULT_MAX_BATCH,
        scratch_dir: Path | None = None,
    ) -> None:
        """Takes over an open, migrated writer connection; `open` is the way to get one."""
        self.path = path
        self._scratch_dir = scratch_dir
        self._writer = GroupCommitWriter(writer_conn, max_batch=max_batch)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="agenttasks-sqlite-reader")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._server_lock: int | None = None

    def serve_alone(self) -> None:
        """Claim the file for this server (`serve`), or StoreUnavailable if another has it.

        A server hears of its own changes only: it tells its watchers and workers, and answers
        watch snapshots from memory, as it commits (`EventHub.keep_latest`). A second server on
        the file would change tasks the first never hears of, and the first would go on giving
        stale snapshots and never the second's events. Several servers need PostgreSQL, where
        every change is announced to all. Admin commands (`keys`, `token`) open the file without
        this claim; they write keys and settings, never tasks. The claim is an flock on a file
        beside the database, so the kernel drops it with the process, however it ends.
        """
        lock = self.path.with_name(self.path.name + "-serve.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreUnavailable(
                f"another agenttasks server{pid} is serving {self.path}: one server per SQLite file; "
                "to run several, give them one PostgreSQL database (docs/deploy.md)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._server_lock = fd

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readers: int = DEFAULT_READERS,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> SqliteStore:
        """Opens (creating the file and its directories) and migrates the database at `path`."""
        if readers < 1 or max_batch < 1:
            raise ValueError("readers and max_batch must be at least 1")
        file = Path(path)
        conn = await asyncio.to_thread(_open_writer_connection, file)
        return cls(file, conn, readers=readers, max_batch=max_batch)

    @classmethod
    async def open_temporary(cls, *, readers: int = DEFAULT_READERS) -> SqliteStore:
        """A throwaway store in a new temporary directory that `close` removes: for tests.

        A real file rather than SQLite's `:memory:`, whose databases cannot be shared by the
        writer and reader connections, so the store behaves exactly as it does in production.
        """
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="agenttasks-"))
        try:
            conn = await asyncio.to_thread(_open_writer_connection, scratch / "agenttasks.db")
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
            raise
        return cls(scratch / "agenttasks.db", conn, readers=readers, scratch_dir=scratch)

    def stats(self) -> WriterStats:
        """Write counters, e.g. to show that concurrent writes share commits."""
        return self._writer.stats()

    def observe_writes(self, observer: WriteObserver | None) -> None:
        """Tell `observer` of each committed batch of writes (metrics); None stops it."""
        self._writer.observe = observer

    async def read(self, fn: Callable[[ReadTx], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    async def write(self, fn: Callable[[WriteTx], T]) -> T:
        self._check_open()
        return await self._writer.submit(fn)

    async def close(self) -> None:
        """Finishes queued writes and reads, then closes every connection. Safe to call twice;
        a second caller waits for the first close to finish."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the store {self.path} is closed")

    def _run_read(self, fn: Callable[[ReadTx], T]) -> T:
        conn = self._reader_connection()
        # One transaction per read function: all its queries see the same snapshot.
        conn.execute("BEGIN")
        tx = SqliteReadTx(conn)
        try:
            return fn(tx)
        finally:
            tx.detach()
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _reader_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, read_only=True)
            self._local.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    async def _shutdown(self) -> None:
        # Writes first (the writer drains its queue before it stops), then reads, then the
        # connections, readers before the writer so that the writer's is the last to close and
        # SQLite's own final checkpoint folds the WAL back into the file.
        await self._writer.close()
        await asyncio.to_thread(self._readers.shutdown, True)
        await asyncio.to_thread(self._close_connections)

    def _close_connections(self) -> None:
        try:
            with self._reader_conns_lock:
                conns, self._reader_conns = self._reader_conns, []
            for conn in conns:
                conn.close()
            self._writer.finish()
        finally:
            if self._server_lock is not None:  # closing the descriptor releases the flock
                os.close(self._server_lock)
                self._server_lock = None
            if self._scratch_dir is not None:
                shutil.rmtree(self._scratch_dir, ignore_errors=True)
