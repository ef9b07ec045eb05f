"""The PostgreSQL writer: one connection, write functions run one at a time, in submission order,
many per COMMIT.

Why one writer rather than a connection per write: the core relies on its write functions
never running at the same time as each other. A dispatch round reserves places on connected
workers inside its write function, and a Submit starts its task for a worker with a free place
inside its own; two of them running at once on two connections could both hand out the last
place. With SQLite they run one by one on the event loop. Here they run one by one on the
writer thread, in the order they were submitted (a worker's disconnect, for one, must find the
tasks that writes queued before it gave that worker), and the loop never waits for PostgreSQL.

Group commit as in the SQLite writer: everything pending (up to `max_batch`) runs in one
transaction, each function inside its own savepoint when there are several, one COMMIT; a
caller hears "done" only once its write is committed. A failing function is rolled back to its
savepoint and only its caller sees the exception; the rest of the batch still commits.
`max_batch` defaults to 64: each savepoint that writes gets a subtransaction id, and a
transaction with more than 64 of them overflows PostgreSQL's per-backend cache, which makes
every other session's visibility checks slower until it ends.

The writer waits for PostgreSQL's answers at the end of each function, so that its outcome is
known before the next runs. For a run of functions marked `ports.Rerunnable` (a Submit's) it
does not: their statements go on without a wait, and the run is settled once. If any of it
failed, the run is rolled back to its savepoint and run again one function at a time, settled,
so each function still gets its own outcome. Measured (docs/benchmarks.md): the waits were
most of the writer's time, and end to end went from ~900 to ~1,100 tasks/s on one replica.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from agenttasks.core.ports import Rerunnable, WriteObserver, WriteTx
from agenttasks.store.postgres_news import Announcements
from agenttasks.store.postgres_tx import BatchCache, Connection, PostgresWriteTx, Q

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since open. commits < writes shows that group commit is sharing commits."""

    writes: int
    batches: int
    commits: int
    reruns: int = 0  # Rerunnable functions run again, settled one by one, after a failure among them
    settled: int = 0  # functions the writer waited for one by one (not in a run of Rerunnable ones)


@dataclass(slots=True)
class _Job:
    fn: Callable[[WriteTx], Any]
    future: asyncio.Future[Any]
    queued: float = field(default_factory=time.perf_counter)


class TransactionLost(psycopg.OperationalError):
    """The batch's transaction was lost under a write function (the connection broke), so the
    writes that ran before it in the batch were lost too."""


# What the writer thread found for one job: (exception or None, result), or None for a job it
# did not run (the transaction was lost before it), which goes back to the head of the queue.
_Outcome = tuple[BaseException | None, Any]


class PostgresWriter:
    """Owns a pool of one connection (which replaces it when it breaks) and the thread that
    writes on it. Used from one event loop, the one that first calls `submit`.

    The writer thread takes the next batch itself as soon as one commits, and hands each
    batch's outcomes to the loop as it goes; the loop only queues writes and wakes the thread.
    When the loop started each batch instead, every batch waited for the loop to get round to
    it, behind the gRPC work queued there: a median of 5.8 ms between batches, a fifth of the
    writer's time in e2e_pg (measured with thread timers around each batch)."""

    def __init__(
        self,
        pool: ConnectionPool[Connection],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        announce: tuple[str, str] | None = None,
    ) -> None:
        """`announce` is (channel, origin): where to NOTIFY other servers of each batch's
        changes (postgres_news), and the name they know this store by; None sends nothing."""
        self._pool = pool
        self._max_batch = max_batch
        self._announce = announce
        # Queued jobs, taken by the writer thread; guarded by `_wake`'s lock.
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._writes = 0
        self._batches = 0
        self._commits = 0
        self._reruns = 0
        self._one_by_one = 0
        self._inserting = False  # whether the last batch inserted tasks (the writer thread's)
        # Told of every committed batch (metrics), on the loop; None costs nothing.
        self.observe: WriteObserver | None = None

    def stats(self) -> WriterStats:
        return WriterStats(
            writes=self._writes,
            batches=self._batches,
            commits=self._commits,
            reruns=self._reruns,
            settled=self._one_by_one,
        )

    def submit(self, fn: Callable[[WriteTx], T]) -> asyncio.Future[T]:
        """Queues fn; the future resolves after the batch holding it has committed.

        Cancelling the future does not withdraw the write: once queued it runs and commits.
        """
        if self._closed:
            raise RuntimeError("the store writer is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._drain, args=(loop,), name="agenttasks-pg-writer", daemon=True)
            self._thread.start()
        elif loop is not self._loop:
            raise RuntimeError("the store is used from another event loop than the one it writes on")
        future: asyncio.Future[T] = loop.create_future()
        with self._wake:
            self._pending.append(_Job(fn, future))
            self._wake.notify()
        return future

    async def close(self) -> None:
        """Refuses new writes and waits until every queued one has committed (or failed)."""
        self._closed = True
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            # Outcomes the thread handed over before it ended run on the loop before this.
            await asyncio.to_thread(self._thread.join)
        self._fail_pending()

    def _fail_pending(self) -> None:
        with self._wake:
            orphans = list(self._pending)
            self._pending.clear()
        for job in orphans:
            if not job.future.done():
                job.future.set_exception(_stopped(None))

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread: runs batches of what is queued, one after the other, until the
        writer is closed and nothing is left."""
        try:
            self._drain_batches(loop)
        except BaseException:
            # Not a failed batch (those are the callers' errors): the thread itself is ending.
            # Later writes are refused at once, and none already queued waits forever.
            self._closed = True
            with self._wake:
                orphans = list(self._pending)
                self._pending.clear()
            self._hand_over(loop, orphans, [(_stopped(None), None)] * len(orphans), time.perf_counter())
            raise

    def _drain_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                count = min(len(self._pending), self._max_batch)
                jobs = [self._pending.popleft() for _ in range(count)]
            self._batches += 1
            began = time.perf_counter()
            outcomes: Sequence[_Outcome | None]
            try:
                outcomes = self._run_batch([job.fn for job in jobs])
            except Exception as exc:  # no caller may wait forever, whatever went wrong
                log.exception("PostgreSQL write batch failed")
                outcomes = [(exc, None)] * len(jobs)
            except BaseException as exc:
                self._hand_over(loop, jobs, [(_stopped(exc), None)] * len(jobs), began)
                raise
            not_run = [job for job, outcome in zip(jobs, outcomes, strict=True) if outcome is None]
            if not_run:
                with self._wake:
                    self._pending.extendleft(reversed(not_run))  # they go first next time
            self._hand_over(loop, jobs, outcomes, began)

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, jobs: Sequence[_Job], outcomes: Sequence[_Outcome | None], began: float
    ) -> None:
        """From the writer thread: the loop resolves the batch's futures, in submission order."""
        ended = time.perf_counter()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._settled, jobs, outcomes, began, ended)

    def _settled(self, jobs: Sequence[_Job], outcomes: Sequence[_Outcome | None], began: float, ended: float) -> None:
        if self.observe is not None:
            done = [job.queued for job, outcome in zip(jobs, outcomes, strict=True) if outcome is not None]
            self.observe(began, ended, done)
        _resolve(jobs, outcomes)

    def _run_batch(self, fns: Sequence[Callable[[WriteTx], Any]]) -> list[_Outcome | None]:
        """On the writer thread: runs `fns` in one transaction; one outcome each, in order."""
        for retry in (True, False):
            with self._pool.connection() as conn:
                quiet = _quiet(conn)
                if not quiet:
                    try:
                        conn.execute("BEGIN")
                    except psycopg.OperationalError:
                        # A connection that broke while idle (a server restart) is only found
                        # out now; nothing ran yet, so the batch may go to a fresh one, once.
                        if retry:
                            continue
                        raise
                outcomes: list[_Outcome | None] | None = None
                try:
                    with conn.pipeline() as pipeline:
                        if quiet:
                            conn.execute("BEGIN")  # goes with the first statement that waits
                        outcomes = self._run_in_transaction(conn, pipeline, fns)
                except psycopg.Error:
                    # Leaving the pipeline syncs once more: on a connection that broke after
                    # the outcomes were settled, that says nothing new.
                    if outcomes is None:
                        raise
                return outcomes
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_in_transaction(
        self, conn: Connection, pipeline: psycopg.Pipeline, fns: Sequence[Callable[[WriteTx], Any]]
    ) -> list[_Outcome | None]:
        """In pipeline mode: SAVEPOINT, the statements whose results a function does not read,
        the NOTIFYs and the COMMIT go with the next statement that waits for an answer, instead
        of each waiting for its own; the writer still waits at the end of each function
        (`PostgresWriteTx.settle`), so each function's outcome is known before the next runs.

        A function about to wait for a row another transaction has locked, before it has locked
        or written anything itself, first commits the functions before it (`release`): waiting
        while holding their row locks, in whatever order the batch's functions took them, is
        how two servers' batches deadlocked (each waiting for a row the other had locked)."""
        single = len(fns) == 1
        outcomes: list[_Outcome | None] = []
        committed = 0  # outcomes[:committed] are committed already, by `release`
        news = Announcements()
        cache = BatchCache()  # what this transaction has read (PostgresWriteTx)
        seqs: collections.deque[int] = collections.deque()  # taken for this batch's task inserts
        taken = 0
        index = 0
        # When the last batch inserted tasks, this one likely does too: its seqs are asked for
        # with its BEGIN, and come back with the first answer the batch waits for anyway.
        ahead: psycopg.Cursor[dict[str, Any]] | None = None
        if self._inserting:
            taken = min(len(fns), 1024)
            ahead = conn.execute(Q["take_task_seqs"], {"count": taken})

        def next_seq() -> int:
            nonlocal taken, ahead
            if not seqs and ahead is not None:
                seqs.extend(int(row["seq"]) for row in ahead.fetchall())
                ahead = None
            if not seqs:
                # Enough for every function left to insert one task; a batch that used them all
                # (BatchSubmit inserts many in one function) gets twice as many each time.
                count = min(max(len(fns) - index, 2 * taken), 1024)
                rows = conn.execute(Q["take_task_seqs"], {"count": count}).fetchall()
                seqs.extend(int(row["seq"]) for row in rows)
                taken += count
            return seqs.popleft()

        def commit() -> None:
            if self._announce is not None:
                # Delivered only if, and once, the COMMIT succeeds.
                channel, origin = self._announce
                for payload in news.payloads(origin):
                    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            conn.execute("COMMIT")
            pipeline.sync()
            self._commits += 1

        def release() -> None:
            nonlocal committed
            if not any(o is not None and o[0] is None for o in outcomes[committed:]):
                return  # nothing before it in this transaction holds a lock
            commit()
            committed = len(outcomes)
            news.clear()
            cache.clear()
            conn.execute("BEGIN")
            conn.execute("SAVEPOINT write_fn")

        # A run of Rerunnable functions (ports.Rerunnable): their statements go without a wait
        # at the end of each (the wait was most of the writer's time, one answer per Submit),
        # from a savepoint of the run's own. The run is settled once, before any other function,
        # COMMIT, or `release`; if any of it failed, it is rolled back and run again one
        # function at a time, settled as any other, so each keeps its own outcome.
        window: list[_Deferred] = []

        def settled(at: int, fn: Callable[[WriteTx], Any]) -> list[_Outcome | None] | None:
            """Runs fns[at] and waits for it; what the batch returns at once, if it must."""
            self._one_by_one += 1
            if not single:
                conn.execute("SAVEPOINT write_fn")
            error, value = _run_one(conn, pipeline, fn, news, cache, None if single else release, next_seq)
            if error is not None:
                cache.clear()  # a rolled-back read or write may have filled it
                try:
                    with contextlib.suppress(psycopg.Error):
                        pipeline.sync()  # leaves the aborted state the failure may have left
                    conn.execute("ROLLBACK" if single else "ROLLBACK TO SAVEPOINT write_fn")
                    pipeline.sync()
                except psycopg.Error as gone:
                    return lost(at, gone, error)
                if single:
                    return [(error, None)]
            outcomes.append((error, value))
            return None

        def lost(at: int, gone: psycopg.Error, *errors: BaseException | None) -> list[_Outcome | None]:
            """The batch's outcomes once its transaction went with the connection: the ones
            since the last commit are lost, fns[at:] get `errors` (None: lost too), the rest
            did not run."""
            after = next((f" after {error!r}" for error in errors if error is not None), "")
            dead = TransactionLost(f"the batch's transaction was lost{after}; this write was lost")
            dead.__cause__ = gone
            return [
                *outcomes[:committed],
                *[(dead if o[0] is None else o[0], None) for o in outcomes[committed:at] if o],
                *[(dead if error is None else error, None) for error in errors],
                *[None] * (len(fns) - at - len(errors)),
            ]

        def window_release() -> None:
            raise _Rerun  # settle the run first: it is run again, this function settled too

        def deferred(at: int, fn: Callable[[WriteTx], Any]) -> list[_Outcome | None] | None:
            """Runs fns[at], a Rerunnable, in the current run without waiting for it."""
            savepoint = "write_fn" if window else "write_window"
            tx = PostgresWriteTx(conn, pipeline, cache, window_release, next_seq)
            try:
                conn.execute(f"SAVEPOINT {savepoint}")
                try:
                    value = fn(tx)
                    checks = tx.defer()
                except Exception as exc:
                    if isinstance(exc, psycopg.Error):
                        raise
                    # Its own error, as a settled function's: its statements are rolled back.
                    cache.clear()
                    conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    outcomes.append((_error(exc), None))
                    window.append(_Deferred(at, fn, None, []))
                    return None
            except (psycopg.Error, _Rerun):
                # A failure of a statement sent before it, or of its own: which, only a settled
                # run can tell.
                return again((at, fn))
            finally:
                tx.detach()
            outcomes.append((None, value))
            window.append(_Deferred(at, fn, tx.news, checks))
            return None

        def close_window() -> list[_Outcome | None] | None:
            """Waits for the run's answers; runs it again, settled, if any of it failed."""
            if not window:
                return None
            try:
                pipeline.sync()
                failed = any(cursor.rowcount != 1 for run in window for cursor, _ in run.checks)
            except psycopg.Error:
                failed = True
            if failed:
                return again(None)
            for run in window:
                if run.news is not None:
                    news.merge(run.news)
            window.clear()
            return None

        def again(current: tuple[int, Callable[[WriteTx], Any]] | None) -> list[_Outcome | None] | None:
            """Rolls the run back and runs its functions (and `current`) again, settled."""
            redo = [(run.at, run.fn) for run in window] + ([current] if current is not None else [])
            window.clear()
            cache.clear()
            first = redo[0][0]
            del outcomes[first:]
            try:
                with contextlib.suppress(psycopg.Error):
                    pipeline.sync()  # leaves the aborted state a failure may have left
                conn.execute("ROLLBACK TO SAVEPOINT write_window")
                pipeline.sync()
            except psycopg.Error as gone:
                return lost(first, gone, *[None] * len(redo))
            for at, fn in redo:
                self._reruns += 1
                if (early := settled(at, fn)) is not None:
                    return early
            return None

        for index, fn in enumerate(fns):
            self._writes += 1
            if not single and isinstance(fn, Rerunnable):
                early = deferred(index, fn)
            else:
                early = close_window() or settled(index, fn)
            if early is not None:
                return early
        if (early := close_window()) is not None:
            return early
        self._inserting = ahead is None and taken > len(seqs)  # some were used
        try:
            commit()
        except psycopg.Error as exc:
            # A function that failed on its own keeps its own error: that is still the truth.
            return [*outcomes[:committed], *[(exc if o[0] is None else o[0], None) for o in outcomes[committed:] if o]]
        return outcomes


class _Rerun(BaseException):  # a signal that no `except Exception` in a write function stops
    """Raised into a Rerunnable function that would commit the functions before it (`release`)
    while their run is not settled: the run is settled by running it again."""


@dataclass(slots=True)
class _Deferred:
    """A Rerunnable function run without waiting: its news (None if it failed on its own) and
    the checks of its UPDATEs, made when the run is settled."""

    at: int
    fn: Callable[[WriteTx], Any]
    news: Announcements | None
    checks: list[tuple[psycopg.Cursor[dict[str, Any]], str]]


def _error(exc: Exception) -> BaseException:
    """What a write function's caller is told of an exception it raised."""
    if isinstance(exc, StopIteration):  # a future cannot carry it (asyncio wraps it too)
        wrapped = RuntimeError("a write function raised StopIteration")
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _run_one(
    conn: Connection,
    pipeline: psycopg.Pipeline,
    fn: Callable[[WriteTx], Any],
    news: Announcements,
    cache: BatchCache,
    release: Callable[[], None] | None,
    next_seq: Callable[[], int],
) -> _Outcome:
    """Runs fn and waits for its statements; what it changed joins `news` only if it succeeded
    (else it is rolled back)."""
    tx = PostgresWriteTx(conn, pipeline, cache, release, next_seq)
    try:
        value = fn(tx)
        tx.settle()
        news.merge(tx.news)
        return None, value
    except Exception as exc:
        return _error(exc), None
    finally:
        tx.detach()


def _quiet(conn: Connection) -> bool:
    """Whether PostgreSQL has sent nothing to this idle connection since its last batch. Then
    the batch's BEGIN need not be a round trip of its own: a server that restarts, or ends the
    connection, says so on it first (an error, then the close), which makes it readable, and
    such a connection still gets a BEGIN alone, that finds out before anything runs."""
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable


def _stopped(cause: BaseException | None) -> RuntimeError:
    error = RuntimeError("the store writer was stopped with this write queued or committing; it may not be stored")
    error.__cause__ = cause
    return error


def _resolve(jobs: Sequence[_Job], outcomes: Sequence[_Outcome | None]) -> None:
    """Resolves futures in submission order, so callers wake in that order."""
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome is None or job.future.done():  # not run: queued again; done: the caller left
            continue
        error, value = outcome
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)
