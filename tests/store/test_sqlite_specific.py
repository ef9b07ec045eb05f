"""What only the SQLite backend promises: WAL and durable settings, group commit, versioned
migrations, crash safety, URL handling, and that nothing that waits (BEGIN, COMMIT, reads) runs
on the event loop.

Writes queued in one turn of the event loop (e.g. by one `asyncio.gather`) form one batch: the
flush starts on the next turn. That is how these tests batch writes, deterministically.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agenttasks.core.model import Agent, AgentStatus, Task, TaskStatus
from agenttasks.core.ports import ReadTx, Store, WriteTx, with_output
from agenttasks.store import SqliteStore, open_store, sqlite_path
from agenttasks.store.migrations import Migration, applied_migrations, load_migrations, migrate, split_statements
from agenttasks.store.postgres_store import PostgresStore
from agenttasks.store.sql import load_queries, parse_queries
from agenttasks.store.sqlite_writer import TransactionLost

MakeAgent = Callable[..., Agent]
MakeTask = Callable[..., Task]

EXPECTED_TABLES = {
    "agents",
    "tasks",
    "task_events",
    "api_keys",
    "idempotency",
    "meta",
    "schema_migrations",
    "queue_counts",
}
EXPECTED_INDEXES = {
    "agents_by_created",
    "tasks_by_agent",
    "tasks_queued",
    "tasks_unfinished",
    "tasks_completed",
    "api_keys_by_tenant",
    "idempotency_expiry",
    "tasks_lease_expiry",
    "tasks_deadline",
    "tasks_by_worker",
    "deliveries_due",
    "deliveries_by_task",
}
CLAIM = (
    "UPDATE tasks SET status = 'running' WHERE seq = (SELECT seq FROM tasks WHERE agent_id = ? "
    "AND status = 'queued' ORDER BY priority DESC, seq LIMIT 1) RETURNING task_id"
)


@pytest_asyncio.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "agenttasks.db")
    try:
        yield store
    finally:
        await store.close()


def raw(tx: ReadTx) -> sqlite3.Connection:
    """The connection behind a transaction view: lets a test inspect or sabotage exactly the
    connection the store uses."""
    conn = tx._conn  # type: ignore[attr-defined]
    assert isinstance(conn, sqlite3.Connection)
    return conn


@asynccontextmanager
async def commit_thread_held(store: Store) -> AsyncIterator[None]:
    """Keeps the writer's commit thread busy until the block ends: a batch started in the block
    waits for its BEGIN, and writes queued meanwhile wait for the next batch.

    Also used by tests beyond this file that run on either backend: with a PostgresStore it
    holds its writer thread, where that writer's batches (BEGIN to COMMIT) run, with a write
    that waits (queued first, it runs in a batch of its own)."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    if isinstance(store, SqliteStore):
        holder = store._writer.on_commit_thread(hold)
    else:
        assert isinstance(store, PostgresStore), store
        holder = asyncio.ensure_future(store.write(lambda tx: hold()))
    await asyncio.to_thread(entered.wait, 30)
    try:
        yield
        # Let every task created in the block run up to its enqueue before releasing.
        await asyncio.sleep(0)
    finally:
        release.set()
        await holder


async def turns(n: int) -> None:
    """Lets the event loop run n turns: enough for queued tasks to take their next steps."""
    for _ in range(n):
        await asyncio.sleep(0)


def schema(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    finally:
        conn.close()
    return {name: sql for name, sql in rows}


# --- connection settings ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wal_full_sync_and_foreign_keys_on_every_connection(sqlite_store: SqliteStore) -> None:
    def pragmas(tx: ReadTx) -> tuple[Any, ...]:
        conn = raw(tx)
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names)

    # synchronous 2 is FULL: a write is acknowledged only once its COMMIT is on disk.
    assert await sqlite_store.write(pragmas) == ("wal", 2, 1, 10_000)
    assert await sqlite_store.read(pragmas) == ("wal", 2, 1, 10_000)


@pytest.mark.asyncio
async def test_nothing_that_waits_runs_on_the_event_loop_thread(sqlite_store: SqliteStore) -> None:
    """BEGIN IMMEDIATE (which waits for another process's lock) and COMMIT (which waits for the
    fsync) run on the commit thread, reads on reader threads; on the loop run only the short
    statements of write functions."""
    loop_thread = threading.current_thread()
    seen: list[tuple[threading.Thread, str]] = []

    def trace(tx: WriteTx) -> None:
        raw(tx).set_trace_callback(lambda sql: seen.append((threading.current_thread(), sql.split()[0].upper())))

    await sqlite_store.write(trace)
    await sqlite_store.write(lambda tx: tx.set_meta("a", "b"))
    await sqlite_store.write(lambda tx: raw(tx).set_trace_callback(None))
    read_thread = await sqlite_store.read(lambda tx: threading.current_thread())

    on_loop = {sql for thread, sql in seen if thread is loop_thread}
    elsewhere = {sql for thread, sql in seen if thread is not loop_thread}
    assert {"BEGIN", "COMMIT"} <= elsewhere
    assert on_loop and not on_loop & {"BEGIN", "COMMIT", "ROLLBACK"}
    assert "INSERT" in on_loop  # the write function's own statement
    assert read_thread is not loop_thread


@pytest.mark.asyncio
async def test_readers_cannot_write(sqlite_store: SqliteStore) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await sqlite_store.read(lambda tx: raw(tx).execute("INSERT INTO meta VALUES ('a', 'b')"))


@pytest.mark.asyncio
async def test_a_view_used_after_its_function_fails_loudly(sqlite_store: SqliteStore) -> None:
    kept = await sqlite_store.write(lambda tx: tx)
    with pytest.raises(RuntimeError, match="after its function returned"):
        kept.set_meta("late", "write")


@pytest.mark.asyncio
async def test_naive_datetimes_are_refused(sqlite_store: SqliteStore, make_agent: MakeAgent) -> None:
    naive = make_agent().created_at.replace(tzinfo=None)
    with pytest.raises(ValueError, match="naive"):
        await sqlite_store.write(lambda tx: tx.insert_agent(make_agent(created_at=naive)))


# --- group commit -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_writes_share_one_commit(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    before = sqlite_store.stats()
    writes = asyncio.gather(
        *(sqlite_store.write(lambda tx, i=i: tx.insert_task(make_task(f"t{i}"))) for i in range(200))
    )
    inserted = await writes
    after = sqlite_store.stats()

    assert len({t.seq for t in inserted}) == 200
    tasks = await sqlite_store.read(
        lambda tx: tx.list_tasks("tenant-a", "agent-1", status=None, before_seq=None, limit=1000)
    )
    assert len(tasks) == 200
    assert after.writes - before.writes == 200
    assert after.commits - before.commits == 1  # one for all 200
    # Run in submission order, so seqs follow the order of the calls.
    assert [t.seq for t in inserted] == sorted(t.seq for t in inserted)


@pytest.mark.asyncio
async def test_batches_are_capped(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "db.sqlite", max_batch=3) as store:
        writes = asyncio.gather(*(store.write(lambda tx, i=i: tx.set_meta(f"k{i}", "v")) for i in range(7)))
        await writes
        assert store.stats().batches == 3  # 3 + 3 + 1


@pytest.mark.asyncio
async def test_a_failing_write_is_rolled_back_alone_within_its_batch(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))

    def insert_then_fail(tx: WriteTx) -> None:
        tx.insert_task(make_task("doomed"))
        raise KeyError("on purpose")

    before = sqlite_store.stats()
    writes = asyncio.gather(
        sqlite_store.write(lambda tx: tx.insert_task(make_task("first"))),
        sqlite_store.write(insert_then_fail),
        sqlite_store.write(lambda tx: tx.insert_task(make_task("doomed"))),  # same id: no leftovers
        return_exceptions=True,
    )
    first, failed, reused = await writes
    assert sqlite_store.stats().commits - before.commits == 1
    assert isinstance(failed, KeyError)
    assert isinstance(first, Task) and isinstance(reused, Task)
    assert await sqlite_store.read(lambda tx: tx.get_task("tenant-a", "doomed")) == reused


@pytest.mark.asyncio
async def test_a_failed_commit_fails_every_write_of_the_batch(sqlite_store: SqliteStore, make_task: MakeTask) -> None:
    def orphan_checked_at_commit(tx: WriteTx) -> None:
        # A deferred foreign key is only checked by COMMIT: the way to make COMMIT itself fail.
        raw(tx).execute("PRAGMA defer_foreign_keys = ON")
        tx.insert_task(make_task("orphan", agent_id="no-such-agent"))

    writes = asyncio.gather(
        sqlite_store.write(lambda tx: tx.set_meta("innocent", "1")),
        sqlite_store.write(orphan_checked_at_commit),
        return_exceptions=True,
    )
    innocent, orphan = await writes
    assert isinstance(innocent, sqlite3.IntegrityError)
    assert isinstance(orphan, sqlite3.IntegrityError)
    assert await sqlite_store.read(lambda tx: tx.get_meta("innocent")) is None
    # The writer carries on.
    await sqlite_store.write(lambda tx: tx.set_meta("after", "1"))
    assert await sqlite_store.read(lambda tx: tx.get_meta("after")) == "1"


@pytest.mark.asyncio
async def test_a_transaction_lost_mid_batch_is_reported_and_the_rest_still_runs(
    sqlite_store: SqliteStore,
) -> None:
    def end_the_transaction(tx: WriteTx) -> None:
        # Stands in for SQLite rolling back a whole transaction (disk full, I/O error).
        raw(tx).execute("ROLLBACK")

    writes = asyncio.gather(
        sqlite_store.write(lambda tx: tx.set_meta("earlier", "1")),
        sqlite_store.write(end_the_transaction),
        sqlite_store.write(lambda tx: tx.set_meta("later", "1")),
        return_exceptions=True,
    )
    earlier, culprit, later = await writes
    assert isinstance(earlier, TransactionLost)
    assert isinstance(culprit, TransactionLost)
    assert later is None

    def look(tx: ReadTx) -> tuple[str | None, str | None]:
        return tx.get_meta("earlier"), tx.get_meta("later")

    assert await sqlite_store.read(look) == (None, "1")


@pytest.mark.asyncio
async def test_close_drains_queued_writes(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    writes = [asyncio.ensure_future(store.write(lambda tx, i=i: tx.set_meta(f"k{i}", "v"))) for i in range(50)]
    await asyncio.sleep(0)  # every write is queued
    await store.close()
    assert all(w.done() and w.exception() is None for w in writes)
    async with await SqliteStore.open(tmp_path / "db.sqlite") as reopened:
        assert await reopened.read(lambda tx: [tx.get_meta(f"k{i}") for i in range(50)]) == ["v"] * 50


# --- migrations and SQL -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_version_1_database_is_upgraded_in_place_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, [m for m in load_migrations() if m.version == 1])
        conn.execute("INSERT INTO agents VALUES ('a1', 't', 'n', '', 'active', '', 3600, 3, 86400, '{}', 1, 1)")
        conn.execute(
            "INSERT INTO tasks (task_id, tenant, agent_id, message, status, priority, metadata, callback_mode,"
            " webhook_url, timeout_seconds, created_at, updated_at, output, input_prompt, attempt, last_sequence,"
            " status_reason) VALUES ('t1', 't', 'a1', 'old task', 'queued', 5, '{}', 'poll', '', 60, 1, 1, '', '',"
            " 0, 1, '')"
        )
    finally:
        conn.close()
    async with await SqliteStore.open(path) as store:
        task = await store.read(lambda tx: tx.get_task("t", "t1"))
        # 0004 counted the queue that was already there.
        queued = await store.read(lambda tx: tx.queued_at_or_above("t", "a1", 1))
    assert task is not None and task.message == "old task"
    assert queued == 1
    assert (task.worker_id, task.lease_expires_at, task.deadline_at, task.run_seconds_left) == ("", None, None, None)


@pytest.mark.asyncio
async def test_0007_moves_each_tasks_output_to_its_events_keeping_what_status_shows(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    events = {
        # A task that wrote in two chunks, one never requeued.
        "t1": [
            ("created", "queued", "{}"),
            ("output", "running", '{"output":"héllo "}'),
            ("output", "running", '{"output":"wörld\\n"}'),
        ],
        # A task whose first attempt was lost: its output shown is the second attempt's.
        "t2": [
            ("created", "queued", "{}"),
            ("output", "running", '{"output":"lost\\n"}'),
            ("status", "queued", '{"reason":"LEASE_LOST","attempt":2}'),
            ("output", "running", '{"output":"kept\\n"}'),
        ],
        "t3": [("created", "queued", "{}")],
    }
    outputs = {"t1": "héllo wörld\n", "t2": "kept\n", "t3": ""}
    try:
        migrate(conn, [m for m in load_migrations() if m.version <= 6])
        conn.execute("INSERT INTO agents VALUES ('a1', 't', 'n', '', 'active', '', 3600, 3, 86400, '{}', 1, 1)")
        for task_id, rows in events.items():
            conn.execute(
                "INSERT INTO tasks (task_id, tenant, agent_id, message, status, priority, metadata, callback_mode,"
                " webhook_url, timeout_seconds, created_at, updated_at, output, input_prompt, attempt,"
                " last_sequence, status_reason) VALUES (?, 't', 'a1', 'm', 'running', 5, '{}', 'poll', '', 60, 1, 1,"
                " ?, '', 1, ?, '')",
                (task_id, outputs[task_id], len(rows)),
            )
            for sequence, (kind, status, data) in enumerate(rows, start=1):
                conn.execute(
                    "INSERT INTO task_events VALUES (?, ?, 't', ?, ?, 1, ?)", (task_id, sequence, kind, status, data)
                )
    finally:
        conn.close()
    async with await SqliteStore.open(path) as store:
        for task_id, shown in outputs.items():
            task = await store.read(lambda tx, t=task_id: tx.get_task("t", t))
            assert task is not None
            assert task.output_bytes == len(shown.encode())
            assert (await store.read(lambda tx, t=task: with_output(tx, t))).output == shown
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]
    finally:
        conn.close()
    assert "output" not in columns and {"output_bytes", "output_after"} <= set(columns)


def test_migrations_build_the_expected_schema_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn) == [m.version for m in load_migrations()]
        recorded = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert migrate(conn) == []  # a second run applies nothing
        assert conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == recorded
    finally:
        conn.close()

    objects = schema(path)
    assert {n for n, sql in objects.items() if sql.startswith("CREATE TABLE")} >= EXPECTED_TABLES
    assert {n for n, sql in objects.items() if sql.startswith("CREATE INDEX")} == EXPECTED_INDEXES
    assert re.search(r"\(agent_id, priority DESC, seq\) WHERE status = 'queued'", objects["tasks_queued"])
    assert "AUTOINCREMENT" in objects["tasks"]


@pytest.mark.asyncio
async def test_reopening_does_not_reapply_migrations(tmp_path: Path) -> None:
    path = tmp_path / "agenttasks.db"
    await (await SqliteStore.open(path)).close()
    before = schema(path), _recorded(path)
    await (await SqliteStore.open(path)).close()
    assert (schema(path), _recorded(path)) == before


def _recorded(path: Path) -> list[tuple[int, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()
    finally:
        conn.close()


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        migrate(conn)
        broken = Migration(len(load_migrations()) + 1, "broken", "CREATE TABLE half (x);\nSELECT nope FROM nowhere;")
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, [*load_migrations(), broken])
        assert broken.version not in applied_migrations(conn)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_database_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        migrate(conn)
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 0)")
        with pytest.raises(RuntimeError, match="newer server"):
            migrate(conn)
    finally:
        conn.close()


def test_statement_splitting_respects_strings_and_triggers() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d';
        END;
        -- trailing comment
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE t (x)")


def test_named_query_files_parse_strictly() -> None:
    assert parse_queries("-- header\n-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;\n") == {
        "a": "SELECT 1;",
        "b": "SELECT 2;",
    }
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="empty"):
        parse_queries("-- name: a\n\n-- name: b\nSELECT 2;\n")


def test_every_named_statement_compiles_against_the_schema(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        migrate(conn)
        for name, sql in load_queries("sqlite").items():
            params = dict.fromkeys(re.findall(r":([a-z_]+)", sql), 1)
            conn.execute(f"EXPLAIN {sql}", params)  # prepares without running
            assert sqlite3.complete_statement(sql), name
    finally:
        conn.close()


def test_the_claim_query_uses_the_partial_queue_index(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        migrate(conn)
        plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {CLAIM}", ("agent-1",)))
    finally:
        conn.close()
    assert "tasks_queued" in plan


def test_unfinished_tasks_are_found_through_their_partial_index(tmp_path: Path) -> None:
    """The index predicate and the query's status test must stay word for word the same, or
    SQLite silently scans every task of the agent (finished ones too) instead."""
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        migrate(conn)
        sql = load_queries("sqlite")["unfinished_tasks"]
        params = dict.fromkeys(re.findall(r":([a-z_]+)", sql), 1)
        plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        conn.close()
    assert "USING INDEX tasks_unfinished" in plan, plan


@pytest.mark.asyncio
async def test_the_claim_query_takes_the_highest_priority_oldest_task(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    for task_id, priority in [("low", 1), ("high-old", 9), ("high-new", 9), ("mid", 5)]:
        await sqlite_store.write(lambda tx, t=task_id, p=priority: tx.insert_task(make_task(t, priority=p)))
    claimed = await sqlite_store.write(lambda tx: raw(tx).execute(CLAIM, ("agent-1",)).fetchone()[0])
    assert claimed == "high-old"
    task = await sqlite_store.read(lambda tx: tx.get_task("tenant-a", "high-old"))
    assert task is not None and task.status is TaskStatus.RUNNING


# --- crash safety -----------------------------------------------------------------------------

CRASH_WRITER = """
import asyncio, sys
from agenttasks.core.model import Agent, Task
from agenttasks.store import open_store

async def writer(store, lane):
    n = 0
    while True:
        task_id = f"lane{lane}-{n}"
        await store.write(lambda tx: tx.insert_task(Task("t", task_id, "a", "m")))
        print(task_id, flush=True)  # the acknowledgement: only after the write() resolved
        n += 1

async def main(path):
    store = await open_store(path)
    await store.write(lambda tx: tx.insert_agent(Agent("t", "a", "agent")))
    await asyncio.gather(*(writer(store, lane) for lane in range(8)))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.asyncio
async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_WRITER, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 300:
            line = await proc.stdout.readline()
            assert line, f"the writer exited early with {await proc.wait()}"
            acknowledged.append(line.decode().strip())
    finally:
        proc.kill()  # SIGKILL: no close, no checkpoint, no atexit
        await proc.stdout.read()
        await proc.wait()

    async with await SqliteStore.open(path) as store:
        found = await store.read(lambda tx: [tx.get_task("t", task_id) is not None for task_id in acknowledged])
    assert all(found)


# --- URLs and the public surface -------------------------------------------------------------------------------------


def test_store_urls_name_sqlite_files() -> None:
    assert sqlite_path("data/agenttasks.db") == Path("data/agenttasks.db")
    assert sqlite_path("sqlite:///data/agenttasks.db") == Path("data/agenttasks.db")
    assert sqlite_path("sqlite:////var/lib/agenttasks.db") == Path("/var/lib/agenttasks.db")
    assert sqlite_path(":memory:") is None
    assert sqlite_path("sqlite://") is None
    for bad in ("", "sqlite://host/db", "sqlite:///", "mysql://x/y"):
        with pytest.raises(ValueError):
            sqlite_path(bad)


def test_a_postgresql_url_is_not_a_sqlite_file() -> None:
    for url in ("postgresql://u@localhost/db", "postgres://localhost/db", "postgresql+psycopg://x/y"):
        with pytest.raises(ValueError, match="PostgreSQL database, not a SQLite file"):
            sqlite_path(url)


@pytest.mark.asyncio
async def test_open_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "agenttasks.db"
    store = await open_store(f"sqlite:///{path}")
    await store.close()
    assert path.is_file()


@pytest.mark.asyncio
async def test_close_succeeds_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    # A second server on the same file (agenttasks gateway over replicas) may be mid-write when
    # this one stops: PRAGMA optimize then cannot get the lock, and closing must not fail.
    path = tmp_path / "shared.db"
    store = await SqliteStore.open(path)
    await store.write(lambda tx: tx.set_meta("k", "v"))
    # Queries that use indexes, on the writer's connection: what makes optimize want to ANALYZE.
    await store.write(
        lambda tx: (tx.list_tasks("t", "a", status=None, before_seq=None, limit=5), tx.next_queued("t", "a", 5))
    )
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta (name, value) VALUES ('held', 'by the other')")
        await store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with await SqliteStore.open(path) as reopened:
        assert await reopened.read(lambda tx: tx.get_meta("k")) == "v"


@pytest.mark.asyncio
async def test_memory_store_is_a_temporary_file_removed_on_close() -> None:
    store = await open_store(":memory:")
    assert isinstance(store, SqliteStore)
    await store.write(lambda tx: tx.set_meta("k", "v"))
    assert await store.read(lambda tx: tx.get_meta("k")) == "v"
    await store.close()
    assert not store.path.parent.exists()


def test_public_surface() -> None:
    import agenttasks.store as store

    assert sorted(store.__all__) == [
        "SqliteStore",
        "StoreUnavailable",
        "WriterStats",
        "open_store",
        "postgres_url",
        "shown_url",
        "sqlite_path",
    ]
    assert {"open", "open_temporary", "read", "write", "close", "stats"} <= set(dir(SqliteStore))


# --- the writer's agent cache ---


@pytest.mark.asyncio
async def test_the_writer_sees_an_agent_changed_by_another_connection(
    sqlite_store: SqliteStore, tmp_path: Path, make_agent: MakeAgent
) -> None:
    """An admin command writing the same file from another process must not be hidden by the
    writer's agent cache: data_version tells the writer someone else committed."""
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    first = await sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1"))
    assert first is not None and first.status.value == "active"

    other = sqlite3.connect(tmp_path / "agenttasks.db", isolation_level=None)
    try:
        other.execute("UPDATE agents SET status = 'paused' WHERE agent_id = 'agent-1'")
    finally:
        other.close()

    again = await sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1"))
    assert again is not None and again.status.value == "paused"


@pytest.mark.asyncio
async def test_a_failed_write_leaves_no_agent_it_read_in_the_cache(
    sqlite_store: SqliteStore, make_agent: MakeAgent
) -> None:
    """A write function that changes an agent, reads it back (filling the cache) and then fails
    is rolled back; the next write must see the agent as stored, not as the failed one left it."""
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))

    def pause_then_fail(tx: WriteTx) -> None:
        agent = tx.get_agent("tenant-a", "agent-1")
        assert agent is not None
        tx.update_agent(make_agent(status=AgentStatus.PAUSED))
        paused = tx.get_agent("tenant-a", "agent-1")
        assert paused is not None and paused.status is AgentStatus.PAUSED
        raise KeyError("on purpose")

    with pytest.raises(KeyError):
        await sqlite_store.write(pause_then_fail)
    stored = await sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1"))
    assert stored is not None and stored.status is AgentStatus.ACTIVE


@pytest.mark.asyncio
async def test_agent_writes_are_seen_by_later_writes_in_the_same_batch(
    sqlite_store: SqliteStore, make_agent: MakeAgent
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    await sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1"))  # cached as active
    writes = asyncio.gather(
        sqlite_store.write(lambda tx: tx.update_agent(make_agent(status=AgentStatus.PAUSED))),
        sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1")),
        sqlite_store.write(lambda tx: tx.delete_agent("tenant-a", "agent-1")),
        sqlite_store.write(lambda tx: tx.get_agent("tenant-a", "agent-1")),
    )
    _, paused, _, deleted = await writes
    assert paused is not None and paused.status is AgentStatus.PAUSED
    assert deleted is None


# --- the writer's task cache ---


def _running(task: Task) -> Task:
    return replace(task, status=TaskStatus.RUNNING, worker_id="w1", attempt=1, last_sequence=2)


@pytest.mark.asyncio
async def test_a_write_reads_back_a_task_exactly_as_stored(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Inserted, then updated: what a later write reads (from the writer's cache) equals what a
    reader decodes from the row."""
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    inserted = await sqlite_store.write(lambda tx: tx.insert_task(make_task("t1", metadata={"k": [1, 2.5]})))
    stored = await sqlite_store.read(lambda tx: tx.get_task("tenant-a", "t1"))
    assert await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1")) == stored == inserted
    await sqlite_store.write(lambda tx: tx.update_task(_running(inserted)))
    stored = await sqlite_store.read(lambda tx: tx.get_task("tenant-a", "t1"))
    assert await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1")) == stored
    assert stored is not None and stored.status is TaskStatus.RUNNING


@pytest.mark.asyncio
async def test_the_writer_sees_a_task_changed_by_another_connection(
    sqlite_store: SqliteStore, tmp_path: Path, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    await sqlite_store.write(lambda tx: tx.insert_task(make_task("t1")))
    other = sqlite3.connect(tmp_path / "agenttasks.db", isolation_level=None)
    try:
        other.execute("UPDATE tasks SET message = 'changed' WHERE task_id = 't1'")
    finally:
        other.close()
    again = await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1"))
    assert again is not None and again.message == "changed"


@pytest.mark.asyncio
async def test_a_failed_write_leaves_no_task_it_wrote_in_the_cache(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    inserted = await sqlite_store.write(lambda tx: tx.insert_task(make_task("t1")))

    def start_then_fail(tx: WriteTx) -> None:
        tx.update_task(_running(inserted))
        raise KeyError("on purpose")

    with pytest.raises(KeyError):
        await sqlite_store.write(start_then_fail)
    again = await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1"))
    assert again is not None and again.status is TaskStatus.QUEUED


@pytest.mark.asyncio
async def test_renewed_leases_and_deleted_tasks_are_read_as_stored(
    sqlite_store: SqliteStore, make_agent: MakeAgent, make_task: MakeTask, when: Callable[[float], Any]
) -> None:
    await sqlite_store.write(lambda tx: tx.insert_agent(make_agent()))
    inserted = await sqlite_store.write(lambda tx: tx.insert_task(make_task("t1")))
    await sqlite_store.write(lambda tx: tx.update_task(replace(_running(inserted), lease_expires_at=when(10))))
    await sqlite_store.write(lambda tx: tx.renew_leases("w1", when(99), ["t1"]))
    renewed = await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1"))
    assert renewed is not None and renewed.lease_expires_at == when(99)
    await sqlite_store.write(lambda tx: tx.delete_agent("tenant-a", "agent-1"))
    assert await sqlite_store.write(lambda tx: tx.get_task("tenant-a", "t1")) is None


@pytest.mark.asyncio
async def test_writes_that_wait_during_a_batch_commit_in_the_next(sqlite_store: SqliteStore) -> None:
    """A write queued while a batch is under way waits for the next batch, whose transaction
    the first one's COMMIT step begins (so before the first write is answered); both are on disk
    when answered."""
    # Whether the first write had been answered, as the commit thread runs each BEGIN.
    begins: list[bool] = []

    def trace(tx: WriteTx) -> None:
        def seen(sql: str) -> None:
            if sql.startswith("BEGIN"):
                begins.append(first.done())

        raw(tx).set_trace_callback(seen)

    await sqlite_store.write(trace)
    before = sqlite_store.stats()
    async with commit_thread_held(sqlite_store):
        first = asyncio.ensure_future(sqlite_store.write(lambda tx: tx.set_meta("first", "1")))
        await turns(3)  # the write queues, then its flush takes it and waits for BEGIN
        assert sqlite_store.stats().batches == before.batches + 1
        second = asyncio.ensure_future(sqlite_store.write(lambda tx: tx.set_meta("second", "2")))
        await asyncio.sleep(0)
    await asyncio.gather(first, second)
    after = sqlite_store.stats()
    await sqlite_store.write(lambda tx: raw(tx).set_trace_callback(None))
    assert (after.batches - before.batches, after.commits - before.commits) == (2, 2)
    assert begins[:2] == [False, False], begins  # the second BEGIN came before the first answer

    def look(tx: ReadTx) -> tuple[str | None, str | None]:
        return tx.get_meta("first"), tx.get_meta("second")

    assert await sqlite_store.read(look) == ("1", "2")  # committed, as a reader sees


@pytest.mark.asyncio
async def test_a_flush_cancelled_before_it_ran_leaves_no_write_behind(sqlite_store: SqliteStore) -> None:
    """E.g. the loop's teardown cancelling every task: the next write starts a new flush, which
    takes the stranded write too; close() does not raise the flush's cancellation."""
    stranded = asyncio.ensure_future(sqlite_store.write(lambda tx: tx.set_meta("stranded", "1")))
    await asyncio.sleep(0)  # queued; its flush is created but has not run
    flusher = sqlite_store._writer._flusher
    assert flusher is not None
    flusher.cancel()
    await asyncio.wait([flusher])
    await sqlite_store.write(lambda tx: tx.set_meta("later", "1"))
    assert await stranded is None
    assert await sqlite_store.read(lambda tx: tx.get_meta("stranded")) == "1"
    await sqlite_store.close()


@pytest.mark.asyncio
async def test_a_flush_cancelled_mid_batch_still_tells_its_callers_the_truth(sqlite_store: SqliteStore) -> None:
    """Cancelled (twice) while its BEGIN waits on the commit thread, the flush sees the batch
    through, so the connection is never used by two threads and the write, committed, says so."""
    async with commit_thread_held(sqlite_store):
        write = asyncio.ensure_future(sqlite_store.write(lambda tx: tx.set_meta("k", "v")))
        await turns(3)
        assert sqlite_store.stats().batches == 1  # waiting for its BEGIN
        flusher = sqlite_store._writer._flusher
        assert flusher is not None
        flusher.cancel()
        await asyncio.sleep(0)
        flusher.cancel()
        await asyncio.sleep(0)
    assert await write is None
    await asyncio.wait([flusher])
    assert flusher.cancelled()
    assert await sqlite_store.read(lambda tx: tx.get_meta("k")) == "v"
    # No transaction was left open: the writer carries on.
    assert await sqlite_store.write(lambda tx: tx.set_meta("after", "1")) is None


@pytest.mark.asyncio
async def test_stop_iteration_in_a_write_function_fails_only_its_caller(sqlite_store: SqliteStore) -> None:
    def stops(tx: WriteTx) -> None:
        tx.set_meta("doomed", "1")
        raise StopIteration  # a Future cannot carry it; left as it is it would break the batch

    first, failed, last = await asyncio.gather(
        sqlite_store.write(lambda tx: tx.set_meta("first", "1")),
        sqlite_store.write(stops),
        sqlite_store.write(lambda tx: tx.set_meta("last", "1")),
        return_exceptions=True,
    )
    assert (first, last) == (None, None)
    assert isinstance(failed, RuntimeError) and isinstance(failed.__cause__, StopIteration)

    def look(tx: ReadTx) -> list[str | None]:
        return [tx.get_meta(k) for k in ("first", "doomed", "last")]

    assert await sqlite_store.read(look) == ["1", None, "1"]


@pytest.mark.asyncio
async def test_the_store_refuses_a_second_event_loop(sqlite_store: SqliteStore) -> None:
    await sqlite_store.write(lambda tx: tx.set_meta("a", "b"))

    async def elsewhere() -> None:
        await sqlite_store.write(lambda tx: tx.set_meta("c", "d"))

    with pytest.raises(RuntimeError, match="another event loop"):
        await asyncio.to_thread(asyncio.run, elsewhere())
