"""The group-commit writer: one connection, many write functions per COMMIT.

With synchronous=FULL every COMMIT waits for an fsync, so one commit per write caps a server at
about 11k writes/s on this hardware while 100 rows per commit reach ~210k/s. The writer takes
everything pending (up to `max_batch`), runs it in one `BEGIN IMMEDIATE` transaction with each
function inside its own SAVEPOINT, commits once, and only then resolves the callers' futures:
a caller hears "done" only for work that is on disk. A failing function is rolled back to its
savepoint and only its caller sees the exception; the rest of the batch still commits.

Where each part runs, and why:

- The write functions run on the event loop thread, one batch at a time. They are short
  (a Submit's is ~150 us: a few statements on pages already in memory) and mostly Python, which
  holds the interpreter lock wherever it runs. Run on a writer thread instead, they contended
  for that lock with the loop at every statement (sqlite3 releases it around each one): in
  alternating runs that cost Submit and end-to-end throughput ~20% (docs/benchmarks.md).
- `BEGIN IMMEDIATE`, which may wait up to the busy timeout for another process's write lock,
  and `COMMIT`, which waits for the fsync, run on the commit thread, so the loop never waits
  for a lock or a disk. While one batch commits, new writes gather for the next.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agenttasks.core.ports import WriteObserver, WriteTx
from agenttasks.store.sqlite_tx import AgentCache, SqliteWriteTx, TaskCache

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since open. commits < writes shows that group commit is sharing fsyncs."""

    writes: int
    batches: int
    commits: int


@dataclass(slots=True)
class _Job:
    fn: Callable[[WriteTx], Any]
    future: asyncio.Future[Any]
    queued: float = field(default_factory=time.perf_counter)


# One outcome per job: (future, exception or None, result).
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, Any]


class TransactionLost(sqlite3.OperationalError):
    """SQLite rolled back the whole batch transaction (e.g. disk full or I/O error inside one
    write function), so the writes that ran before it in the batch were lost too."""


class GroupCommitWriter:
    """Owns `conn` (in autocommit mode) until `finish()`. Used from one event loop, the one
    that first calls `submit`."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 512) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._pending: collections.deque[_Job] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._commit_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agenttasks-sqlite-commit")
        self._closed = False
        self._writes = 0
        self._batches = 0
        self._commits = 0
        # Agents read or written and unfinished tasks written by this writer (see SqliteWriteTx),
        # valid while data_version shows no commit by another connection.
        self._agents: AgentCache = {}
        self._tasks: TaskCache = {}
        self._data_version = -1
        self._cancelled = False
        # As the store set it on the connection, restored after each lock-free BEGIN.
        self._busy_timeout_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        # Told of every committed batch (metrics); None costs nothing.
        self.observe: WriteObserver | None = None

    def stats(self) -> WriterStats:
        return WriterStats(writes=self._writes, batches=self._batches, commits=self._commits)

    def submit(self, fn: Callable[[WriteTx], T]) -> asyncio.Future[T]:
        """Queues fn; the future resolves after the batch holding it has committed.

        Cancelling the future does not withdraw the write: once queued it runs and commits.
        """
        if self._closed:
            raise RuntimeError("the store writer is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("the store is used from another event loop than the one it writes on")
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(fn, future))
        # A flusher cancelled before it ever ran is done without having cleaned up: replace it.
        if self._flusher is None or self._flusher.done():
            # Started on the next turn of the loop: every write queued until then joins the batch.
            self._flusher = loop.create_task(self._flush(), name="agenttasks-sqlite-flush")
        return future

    def on_commit_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Runs fn on the commit thread, after whatever BEGIN or COMMIT is already there."""
        return asyncio.get_running_loop().run_in_executor(self._commit_thread, fn)

    async def close(self) -> None:
        """Refuses new writes and waits until every queued one has committed (or failed)."""
        self._closed = True
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])  # its own cancellation is not ours to raise
        # Only a flusher cancelled before it ran (its loop shutting down) leaves writes here.
        self._fail_pending()

    def _fail_pending(self) -> None:
        """Fails every queued write: for when no flush will run them (the loop is ending)."""
        orphans = list(self._pending)
        self._pending.clear()
        _resolve([(job.future, _stopped(None), None) for job in orphans])

    def finish(self) -> None:
        """After `close`: refresh planner statistics and close the connection (blocking).

        No explicit WAL checkpoint: when the last connection to the file closes SQLite
        checkpoints and removes the WAL itself, and while another process (an admin command
        beside a running server) still uses the file a TRUNCATE checkpoint would wait out the
        busy timeout for nothing.
        """
        self._commit_thread.shutdown(wait=True)
        conn = self._conn
        try:
            # The limit keeps optimize's ANALYZE cheap on a large database, as SQLite advises.
            conn.execute("PRAGMA analysis_limit = 400")
            # Another process writing the file (a second server on it) may hold the lock: the
            # statistics are a nicety, so closing neither waits long nor fails for them.
            conn.execute("PRAGMA busy_timeout = 100")
            conn.execute("PRAGMA optimize")
        except sqlite3.OperationalError as error:
            log.info("skipped PRAGMA optimize on close: %s", error)
        finally:
            conn.close()

    async def _flush(self) -> None:
        begun: int | None = None  # data_version of a transaction the last COMMIT step began
        self._cancelled = False
        try:
            while self._pending:
                count = min(len(self._pending), self._max_batch)
                jobs = [self._pending.popleft() for _ in range(count)]
                try:
                    began = time.perf_counter()
                    begun = await self._run_batch(jobs, begun)
                    if self.observe is not None:
                        self.observe(began, time.perf_counter(), [job.queued for job in jobs])
                    if self._cancelled:  # the batch was seen through and its callers told
                        raise asyncio.CancelledError
                except BaseException as exc:  # no caller may wait forever, whatever went wrong
                    begun = None
                    self._forget()  # a rolled-back write function may have filled them
                    if self._conn.in_transaction:  # the commit thread is idle: _wait_for saw to it
                        self._conn.execute("ROLLBACK")
                    if isinstance(exc, Exception):
                        log.exception("SQLite write batch failed")
                        _resolve([(job.future, exc, None) for job in jobs])
                        continue
                    _resolve([(job.future, _stopped(exc), None) for job in jobs])
                    raise
        finally:
            self._flusher = None
            # Only left behind when the flush was cancelled (its loop is shutting down).
            self._fail_pending()

    async def _run_batch(self, jobs: list[_Job], begun: int | None) -> int | None:
        """Runs one batch in the transaction `begun` (or a new one); returns the data_version of
        the next transaction if its COMMIT step began one for writes already waiting."""
        conn = self._conn
        self._batches += 1
        if begun is not None:
            version = begun
        else:
            try:
                version = await self._wait_for(self.on_commit_thread(self._begin))
            except sqlite3.Error as exc:
                _resolve([(job.future, exc, None) for job in jobs])
                return None
        if version != self._data_version:  # another connection (an admin command) committed
            self._forget()
            self._data_version = version
        outcomes: list[_Outcome] = []
        for index, job in enumerate(jobs):
            self._writes += 1
            error, value = self._run_one(conn, job.fn, self._agents, self._tasks)
            if error is not None:  # its rolled-back reads or writes may have filled the caches
                self._forget()
            outcomes.append((job.future, error, value))
            if not conn.in_transaction:
                # SQLite dropped the whole transaction: earlier successes are gone with it.
                self._forget()
                reason = f" after {error!r}" if error is not None else ""
                lost = TransactionLost(f"SQLite rolled back the batch transaction{reason}; this write was lost")
                lost.__cause__ = error
                _resolve([(f, e if e is not None else lost, None) for f, e, _ in outcomes])
                self._pending.extendleft(reversed(jobs[index + 1 :]))  # the rest go first next time
                return None
        # Writes that arrived meanwhile get their transaction begun in the same hop to the
        # commit thread: one hand-off per batch instead of two.
        begin_next = bool(self._pending)
        try:
            began = await self._wait_for(self.on_commit_thread(lambda: self._commit(begin_next)))
        except sqlite3.Error as exc:
            self._forget()
            # A function that failed on its own keeps its own error: that is still the truth.
            outcomes = [(f, e if e is not None else exc, None) for f, e, _ in outcomes]
            began = None
        else:
            self._commits += 1
        _resolve(outcomes)
        return began

    async def _wait_for(self, step: asyncio.Future[T]) -> T:
        """Awaits a BEGIN or COMMIT on the commit thread, to its end even if the flush is
        cancelled (the loop shutting down), however often: the connection must never be used
        by two threads at once, and callers must hear what really happened. The cancellation
        is remembered and raised by `_flush` once the batch is settled."""
        while not step.done():
            try:
                await asyncio.wait([step])
            except asyncio.CancelledError:
                self._cancelled = True
        return step.result()

    def _forget(self) -> None:
        """Drop what the write views remember (see SqliteWriteTx): the store may not hold it."""
        self._agents.clear()
        self._tasks.clear()

    def _begin(self) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Inside the transaction: nobody else can commit until ours ends.
            return int(conn.execute("PRAGMA data_version").fetchone()[0])
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _commit(self, begin_next: bool) -> int | None:
        """COMMIT, then (if asked) begin the next transaction; its data_version, or None if
        none was begun. This BEGIN does not wait for another process's lock (the batch just
        committed would wait with it to be answered): if the lock is taken, the next batch
        begins on its own, with the full busy timeout, and meets and reports any error."""
        conn = self._conn
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if not begin_next:
            return None
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            return self._begin()
        except sqlite3.Error:
            return None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")

    @staticmethod
    def _run_one(
        conn: sqlite3.Connection, fn: Callable[[WriteTx], Any], agents: AgentCache, tasks: TaskCache
    ) -> tuple[Exception | None, Any]:
        conn.execute("SAVEPOINT write_fn")
        tx = SqliteWriteTx(conn, agents, tasks)
        try:
            value = fn(tx)
        except Exception as exc:
            if isinstance(exc, StopIteration):  # a future cannot carry it (asyncio wraps it too)
                wrapped = RuntimeError("a write function raised StopIteration")
                wrapped.__cause__ = exc
                exc = wrapped
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO write_fn")
                    conn.execute("RELEASE write_fn")
            except sqlite3.Error:
                # The savepoint is gone or unusable; give up the batch rather than guess.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return exc, None
        finally:
            tx.detach()
        # Not in a transaction here means SQLite rolled it back under a function that caught
        # the error itself; the batch notices and reports the loss.
        if conn.in_transaction:
            conn.execute("RELEASE write_fn")
        return None, value


def _stopped(cause: BaseException | None) -> RuntimeError:
    error = RuntimeError("the store writer was stopped with this write queued or committing; it may not be stored")
    error.__cause__ = cause
    return error


def _resolve(outcomes: Sequence[_Outcome]) -> None:
    """Resolves futures in submission order, so callers wake in that order."""
    for future, error, value in outcomes:
        if future.done():  # the caller was cancelled; the write stands regardless
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
