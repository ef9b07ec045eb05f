"""What only the PostgreSQL backend has to get right: its URLs, its migrations when several
servers start at once, claims that skip each other's rows across connections, its named
statements against the schema, and the one line a missing driver or database gets.

Everything runs against the local PostgreSQL server (a fresh schema per test, see
tests/support.py); the contract every backend keeps is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from agenttasks.core.errors import AgentNotFound, TaskNotFound
from agenttasks.core.model import Agent, AgentStatus, EventType, Task, TaskEvent, TaskStatus
from agenttasks.core.ports import ReadTx, Rerunnable, TaskNews, WriteTx
from agenttasks.store import StoreUnavailable, open_store, postgres_url, shown_url, sqlite_path
from agenttasks.store.migrations import Migration, load_migrations
from agenttasks.store.postgres_migrations import MIGRATION_LOCK_KEY, applied_migrations, has_schema, migrate
from agenttasks.store.postgres_store import PostgresStore, redact
from agenttasks.store.postgres_tx import WITH_EVENT
from agenttasks.store.sql import load_queries
from tests.store.test_sqlite_specific import commit_thread_held
from tests.support import PostgresDatabases

MakeAgent = Callable[..., Agent]
MakeTask = Callable[..., Task]


@pytest.fixture
def empty_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A new schema without the agenttasks tables: what a first start finds."""
    with postgres_databases.database(migrated=False) as url:
        yield url


@pytest.fixture
def url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    with postgres_databases.database() as made:
        yield made


@pytest_asyncio.fixture
async def pg_store(url: str) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(url)
    try:
        yield store
    finally:
        await store.close()


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


def tables(url: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    return {str(row[0]) for row in rows}


# --- URLs and the one line a person gets ------------------------------------------------------


def test_postgresql_urls_are_recognised_and_normalised() -> None:
    assert postgres_url("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert postgres_url("postgres://u@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"
    assert postgres_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert postgres_url("PostgreSQL://h/db") == "postgresql://h/db"
    for not_postgres in ("agenttasks.db", "sqlite:///x.db", ":memory:", "/var/lib/a.db"):
        assert postgres_url(not_postgres) is None
    with pytest.raises(ValueError, match="postgresql://"):
        postgres_url("postgresql+asyncpg://u@h/db")
    with pytest.raises(ValueError, match="not a SQLite file"):
        sqlite_path("postgres://h/db")


def test_messages_never_show_the_password() -> None:
    shown = redact("postgresql://agent:s3cret@db.example:6543/tasks?sslmode=require")
    assert shown == "postgresql://agent:***@db.example:6543/tasks?sslmode=require"
    assert "s3cret" not in redact("postgres://agent:s3cret@h/db")
    assert redact("postgresql://h/db?user=agent&password=s3cret") == "postgresql://h/db?user=agent&password=***"
    assert shown_url("agenttasks.db") == "agenttasks.db"


@pytest.mark.asyncio
async def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await open_store("postgresql://postgres:s3cret@127.0.0.1:1/nowhere")
    message = str(caught.value)
    assert message.startswith("cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1/nowhere: ")
    assert "\n" not in message and "s3cret" not in message


@pytest.mark.asyncio
async def test_admin_opening_never_creates_a_schema(empty_url: str) -> None:
    with pytest.raises(StoreUnavailable, match="no agenttasks schema"):
        await open_store(empty_url, create=False)
    assert tables(empty_url) == set()
    store = await open_store(empty_url)  # what serve does
    await store.close()
    reopened = await open_store(empty_url, create=False)
    await reopened.close()


BLOCK_PSYCOPG = "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"


def run_without_driver(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PSYCOPG + code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_missing_driver_is_one_line_with_the_install_hint() -> None:
    for command in (["keys", "list", "--tenant", "t"], ["serve", "--grpc-port", "0", "--no-gateway"]):
        argv = [*command, "--db", "postgresql://postgres@127.0.0.1:5432/test"]
        result = run_without_driver(f"from agenttasks.cli.main import main; sys.exit(main({argv!r}))")
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "psycopg" in line and "pip install 'agenttasks[postgres]'" in line, line


def test_sqlite_needs_no_driver(tmp_path: Any) -> None:
    code = (
        "import asyncio\nfrom agenttasks.store import open_store\n"
        "async def go():\n    s = await open_store(sys.argv[1])\n    await s.write(lambda tx: tx.set_meta('k', 'v'))\n"
        "    await s.close()\nasyncio.run(go())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PSYCOPG + code, str(tmp_path / "a.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- migrations --------------------------------------------------------------------------------


def test_migrations_build_every_table_of_the_schema_once(empty_url: str) -> None:
    with connect(empty_url) as conn:
        assert not has_schema(conn)
        assert migrate(conn) == [m.version for m in load_migrations("postgresql")]
        assert migrate(conn) == []
        assert sorted(applied_migrations(conn)) == [m.version for m in load_migrations("postgresql")]
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'tasks'"
        ).fetchall()
    assert tables(empty_url) == {
        "agents",
        "tasks",
        "task_events",
        "api_keys",
        "idempotency",
        "meta",
        "webhook_deliveries",
        "signing_secrets",
        "queue_counts",
        "schema_migrations",
    }
    # The output lives in its events only; the row keeps its size and where it starts.
    names = {row[0] for row in columns}
    assert {"output_bytes", "output_after", "worker_id", "lease_expires_at", "run_seconds_left"} <= names
    assert "output" not in names


def test_servers_starting_at_once_migrate_once(empty_url: str) -> None:
    """Processes opening one new database at the same moment: the advisory lock makes them take
    turns, so each migration runs once and every process starts."""
    code = (
        "import asyncio, sys\nfrom agenttasks.store import open_store\n"
        "async def go():\n    store = await open_store(sys.argv[1])\n    await store.close()\n"
        "asyncio.run(go())\n"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=60), p.communicate()[1]) for p in starts]
    assert all(code == 0 for code, _ in results), results
    with connect(empty_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in load_migrations("postgresql")]


def test_migrating_waits_for_the_lock_a_starting_server_holds(empty_url: str) -> None:
    with connect(empty_url) as holder, connect(empty_url) as other:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
        done = threading.Event()
        thread = threading.Thread(target=lambda: (migrate(other), done.set()))
        thread.start()
        assert not done.wait(0.5)  # a second starter waits rather than migrating alongside
        holder.execute("COMMIT")
        thread.join(30)
        assert done.is_set()
        assert has_schema(other)


def test_a_failing_migration_leaves_no_trace(empty_url: str) -> None:
    broken = [*load_migrations("postgresql"), Migration(99, "broken", "CREATE TABLE ok (x int); SELECT 1/0;")]
    with connect(empty_url) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrate(conn, broken)
        assert not has_schema(conn)  # not even the earlier migrations of the same run
    assert tables(empty_url) == set()


def test_a_database_from_a_newer_server_is_refused(url: str) -> None:
    with connect(url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
        with pytest.raises(RuntimeError, match="newer server"):
            migrate(conn)


@pytest.mark.asyncio
async def test_a_newer_database_is_one_line_when_opened(url: str) -> None:
    with connect(url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
    with pytest.raises(StoreUnavailable, match="newer server"):
        await open_store(url)


# --- the named statements ----------------------------------------------------------------------


def test_every_named_statement_plans_against_the_schema(url: str) -> None:
    """EXPLAIN parses, binds and plans each statement without running it: a typo or a missing
    column fails here even for statements no other test reaches."""
    queries = {**load_queries("postgresql"), **{f"{name} with its event": q for name, q in WITH_EVENT.items()}}
    with connect(url) as conn:
        for name, query in queries.items():
            if name == "create_schema_migrations":  # DDL cannot be EXPLAINed; migrations run it
                continue
            params = {key: None for key in _placeholders(query)}
            try:
                conn.execute(f"EXPLAIN {query}", params)  # type: ignore[call-overload]
            except psycopg.Error as error:
                raise AssertionError(f"{name}: {error}") from error


def _placeholders(query: str) -> set[str]:
    import re

    return set(re.findall(r"%\((\w+)\)s", query))


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("get_task", "tasks_task_id_key"),
        ("get_task_locked", "tasks_task_id_key"),
        ("update_task", "tasks_task_id_key"),
        ("get_agent", "agents_pkey"),
        ("update_agent", "agents_pkey"),
        ("delete_agent", "agents_pkey"),
        ("get_delivery", "webhook_deliveries_pkey"),
        ("get_delivery_locked", "webhook_deliveries_pkey"),
        ("update_delivery", "webhook_deliveries_pkey"),
    ],
)
def test_lookups_by_id_keep_their_unique_index_in_a_generic_plan(url: str, name: str, index: str) -> None:
    """Connections keep generic plans of prepared statements; one made on empty tables must not
    search a tenant-led index with the id as a mere filter (that walked the whole tenant)."""
    import re

    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", numbered, load_queries("postgresql")[name])
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE lookup AS {body}")  # type: ignore[call-overload]
        nulls = ", ".join(["NULL"] * len(names))
        plan = "\n".join(str(row[0]) for row in conn.execute(f"EXPLAIN EXECUTE lookup({nulls})"))  # type: ignore[call-overload]
    assert f"Index Scan using {index} " in plan, plan


def test_the_claim_uses_the_partial_queue_index(url: str) -> None:
    query = load_queries("postgresql")["next_queued_locked"]
    with connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # an empty table would be scanned whole otherwise
        params = {"tenant": "t", "agent_id": "a", "limit": 1}
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}", params))  # type: ignore[call-overload]
    assert "tasks_queued" in plan, plan
    assert "LockRows" in plan, plan


# --- claims and writes across connections -------------------------------------------------------


async def _queue(store: PostgresStore, make_agent: MakeAgent, make_task: MakeTask, n: int) -> list[Task]:
    await store.write(lambda tx: tx.insert_agent(make_agent()))
    return [await store.write(lambda tx, i=i: tx.insert_task(make_task(f"task-{i}"))) for i in range(n)]


@pytest.mark.asyncio
async def test_claims_on_two_connections_skip_each_others_rows_without_waiting(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Two servers claim for one agent at once: the second gets the next task at once, never
    the first one's, and never waits for the first one's transaction to end."""
    queued = await _queue(pg_store, make_agent, make_task, 3)
    claimed, release = threading.Event(), threading.Event()

    def first_claim(tx: WriteTx) -> list[str]:
        tasks = tx.next_queued("tenant-a", "agent-1", 1)
        claimed.set()
        release.wait(30)  # holds its transaction, and the row lock, open
        for task in tasks:
            tx.update_task(dataclasses.replace(task, status=TaskStatus.RUNNING, worker_id="w1"))
        return [t.task_id for t in tasks]

    other = await PostgresStore.open(url)
    try:
        first = asyncio.ensure_future(pg_store.write(first_claim))
        await asyncio.to_thread(claimed.wait, 30)

        def second_claim(tx: WriteTx) -> list[str]:
            tasks = tx.next_queued("tenant-a", "agent-1", 2)
            for task in tasks:
                tx.update_task(dataclasses.replace(task, status=TaskStatus.RUNNING, worker_id="w2"))
            return [t.task_id for t in tasks]

        # Would time out if it waited for the first claim's lock.
        second = await asyncio.wait_for(other.write(second_claim), 10)
        assert not first.done()
        release.set()
        assert await first == [queued[0].task_id]
        assert second == [queued[1].task_id, queued[2].task_id]
        owners = await pg_store.read(lambda tx: {t.task_id: tx.get_task("tenant-a", t.task_id) for t in queued})
        assert {k: v.worker_id for k, v in owners.items() if v} == {
            queued[0].task_id: "w1",
            queued[1].task_id: "w2",
            queued[2].task_id: "w2",
        }
    finally:
        release.set()
        await other.close()


@pytest.mark.asyncio
async def test_queue_counts_stay_exact_across_connections(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Queued through one server, claimed through another: each counts on its own connection's
    shard (one may go below zero), and the sum is exact."""
    await _queue(pg_store, make_agent, make_task, 5)
    other = await PostgresStore.open(url)
    try:

        def claim_two(tx: WriteTx) -> None:
            for task in tx.next_queued("tenant-a", "agent-1", 2):
                tx.update_task(dataclasses.replace(task, status=TaskStatus.RUNNING, worker_id="w"))

        await other.write(claim_two)
        for store in (pg_store, other):
            assert await store.read(lambda tx: tx.queued_at_or_above("tenant-a", "agent-1", 0)) == 3
    finally:
        await other.close()


@pytest.mark.asyncio
async def test_concurrent_writes_share_commits(pg_store: PostgresStore, make_agent: MakeAgent) -> None:
    before = pg_store.stats()
    await asyncio.gather(*(pg_store.write(lambda tx, i=i: tx.set_meta(f"k{i}", "v")) for i in range(200)))
    after = pg_store.stats()
    assert after.writes - before.writes == 200
    assert after.commits - before.commits < 200 / 4  # batched: at most 64 a commit
    assert await pg_store.read(lambda tx: [tx.get_meta(f"k{i}") for i in range(200)]) == ["v"] * 200


@pytest.mark.asyncio
async def test_write_functions_run_one_at_a_time_in_submission_order(pg_store: PostgresStore) -> None:
    """The core relies on it: a write function never runs beside another (they reserve worker
    places), and each sees every write queued before it."""
    running = 0
    seen: list[int] = []

    def op(tx: WriteTx, n: int) -> None:
        nonlocal running
        running += 1
        assert running == 1
        tx.set_meta("last", str(n))
        seen.append(n)
        running -= 1

    await asyncio.gather(*(pg_store.write(lambda tx, n=n: op(tx, n)) for n in range(100)))
    assert seen == list(range(100))
    assert await pg_store.read(lambda tx: tx.get_meta("last")) == "99"


@pytest.mark.asyncio
async def test_a_pipelined_statement_that_fails_fails_its_own_function_only(
    pg_store: PostgresStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """The writer sends statements whose results a function does not read without waiting
    (pipeline mode): their failures must still fail that function, undo all it wrote, and leave
    the functions beside it in the batch committed."""
    agent = make_agent()
    await pg_store.write(lambda tx: tx.insert_agent(agent))
    ghost = make_task("never-inserted")

    def writes_then_updates_a_missing_task(tx: WriteTx) -> None:
        tx.set_meta("undone", "1")
        tx.update_task(ghost)  # no such row: found out only when the function's statements settle
        tx.set_meta("also-undone", "1")

    def duplicate_key(tx: WriteTx) -> None:
        tx.set_meta("undone-too", "1")
        tx.insert_agent(agent)

    results = await asyncio.gather(
        pg_store.write(lambda tx: tx.set_meta("kept-1", "1")),
        pg_store.write(writes_then_updates_a_missing_task),
        pg_store.write(duplicate_key),
        pg_store.write(lambda tx: tx.set_meta("kept-2", "1")),
        return_exceptions=True,
    )
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], LookupError)
    assert isinstance(results[2], psycopg.errors.UniqueViolation)
    names = ["kept-1", "kept-2", "undone", "also-undone", "undone-too"]
    found = await pg_store.read(lambda tx: [tx.get_meta(name) for name in names])
    assert found == ["1", "1", None, None, None]


class Runs:
    """Counts the runs of each named Rerunnable write function."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, name: str, body: Callable[[WriteTx], Any]) -> Rerunnable[Any]:
        def fn(tx: WriteTx) -> Any:
            self.count[name] = self.count.get(name, 0) + 1
            return body(tx)

        return Rerunnable(fn)


@pytest.mark.asyncio
async def test_rerunnable_functions_are_settled_together_and_each_run_once(pg_store: PostgresStore) -> None:
    """A batch of Rerunnable functions (Submits) waits for its answers once, not after each;
    when nothing fails, each runs once, in order, seeing the writes before it."""
    runs = Runs()
    before = pg_store.stats()

    def step(n: int) -> Callable[[WriteTx], str | None]:
        def body(tx: WriteTx) -> str | None:
            seen = tx.get_meta("last")
            tx.set_meta("last", str(n))
            return seen

        return body

    results = await asyncio.gather(*(pg_store.write(runs(f"f{n}", step(n))) for n in range(20)))
    assert results == [None, *[str(n) for n in range(19)]]
    assert runs.count == {f"f{n}": 1 for n in range(20)}
    assert await pg_store.read(lambda tx: tx.get_meta("last")) == "19"
    # Writes that read nothing, queued while the writer is held so that they make one batch:
    # no wait per function; plain functions are waited for one by one (and so is the holder).
    start = pg_store.stats()
    async with commit_thread_held(pg_store):
        queued = asyncio.gather(
            *(pg_store.write(runs(f"b{n}", lambda tx, n=n: tx.set_meta(f"b{n}", "1"))) for n in range(20))
        )
    blind = await queued
    middle = pg_store.stats()
    async with commit_thread_held(pg_store):
        queued = asyncio.gather(*(pg_store.write(lambda tx, n=n: tx.set_meta(f"p{n}", "1")) for n in range(20)))
    await queued
    after = pg_store.stats()
    assert blind == [None] * 20 and after.reruns == before.reruns
    assert middle.settled - start.settled == 1  # the holder's
    assert after.settled - middle.settled == 21
    assert await pg_store.read(lambda tx: {tx.get_meta(f"{k}{n}") for k in "bp" for n in range(20)}) == {"1"}


@pytest.mark.asyncio
async def test_a_failure_among_rerunnable_functions_fails_its_own_only(
    pg_store: PostgresStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Sent without waiting, a Rerunnable's failing statement is found only when the run is
    settled: the run is rolled back and run again one function at a time, so each function
    keeps its own outcome, exactly as settled functions do, and the others are committed once."""
    agent = make_agent()
    await pg_store.write(lambda tx: tx.insert_agent(agent))
    ghost = make_task("never-inserted")
    runs = Runs()
    before = pg_store.stats()

    def writes_then_updates_a_missing_task(tx: WriteTx) -> None:
        tx.set_meta("undone", "1")
        tx.update_task(ghost)  # no such row: found out only when the run settles
        tx.set_meta("also-undone", "1")

    def duplicate_key(tx: WriteTx) -> None:
        tx.set_meta("undone-too", "1")
        tx.insert_agent(agent)

    def count(name: str) -> Callable[[WriteTx], None]:
        def body(tx: WriteTx) -> None:
            tx.set_meta(name, str(int(tx.get_meta(name) or "0") + 1))

        return body

    async def batch(*fns: Callable[[WriteTx], Any]) -> list[Any]:
        async with commit_thread_held(pg_store):  # queued together: one batch
            queued = asyncio.gather(*(pg_store.write(fn) for fn in fns), return_exceptions=True)
        return await queued

    def blind(name: str) -> Callable[[WriteTx], None]:
        return lambda tx: tx.set_meta(name, "1")

    # Found when the run settles: a failed check, and a failed statement, each alone in its run.
    results = await batch(runs("blind-1", blind("blind-1")), runs("missing", writes_then_updates_a_missing_task))
    assert results[0] is None and isinstance(results[1], LookupError), results
    results = await batch(runs("duplicate", duplicate_key), runs("blind-2", blind("blind-2")))
    assert isinstance(results[0], psycopg.errors.UniqueViolation) and results[1] is None, results
    # Found by a later function's read, which waits for the statements before it.
    results = await batch(
        runs("kept-1", count("kept-1")),
        runs("missing-2", writes_then_updates_a_missing_task),
        runs("duplicate-2", duplicate_key),
        runs("kept-2", count("kept-2")),
    )
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], LookupError)
    assert isinstance(results[2], psycopg.errors.UniqueViolation)
    names = ["blind-1", "blind-2", "kept-1", "kept-2", "undone", "also-undone", "undone-too"]
    found = await pg_store.read(lambda tx: [tx.get_meta(name) for name in names])
    assert found == ["1", "1", "1", "1", None, None, None]  # first runs of kept-1 and kept-2 left nothing
    # Each ran again, settled. A function after a failed statement may have found the failure
    # before its own first run began (psycopg reads answers that have come as it sends).
    assert all(runs.count[name] == 2 for name in ("blind-1", "missing", "duplicate", "kept-1", "missing-2")), runs
    assert all(runs.count[name] in (1, 2) for name in ("blind-2", "duplicate-2", "kept-2")), runs
    assert pg_store.stats().reruns - before.reruns == 8


class Heard:
    """The news another store hears (Neighbours)."""

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.changed = asyncio.Event()

    def tasks_changed(self, news: list[TaskNews]) -> None:
        self.tasks += [item.task_id for item in news]
        self.changed.set()

    def keys_revoked(self, key_ids: list[str]) -> None:
        pass

    def may_have_missed(self) -> None:
        pass


@pytest.mark.asyncio
async def test_what_a_run_of_rerunnable_functions_wrote_is_announced_to_other_servers_once(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Their news joins the batch's NOTIFY only once the run is settled: all of it when it
    succeeded, and, after a rerun, only that of the functions that succeeded."""
    await pg_store.write(lambda tx: tx.insert_agent(make_agent()))
    other, heard, stopping = await PostgresStore.open(url), Heard(), asyncio.Event()
    follower = asyncio.ensure_future(other.follow_others(heard, stopping))
    runs = Runs()

    def insert(name: str) -> Callable[[WriteTx], None]:
        def body(tx: WriteTx) -> None:
            task = tx.insert_task(make_task(name))
            tx.append_event(
                TaskEvent(task.tenant, task.task_id, 1, EventType.STATUS, TaskStatus.QUEUED, task.updated_at, {})
            )

        return body

    def fails(tx: WriteTx) -> None:
        insert("undone")(tx)
        tx.update_task(make_task("never-inserted"))

    try:
        await asyncio.sleep(0.5)  # listening
        async with commit_thread_held(pg_store):
            queued = asyncio.gather(
                *(pg_store.write(runs(name, insert(name))) for name in ("n1", "n2", "n3")), return_exceptions=True
            )
        assert await queued == [None, None, None]
        async with commit_thread_held(pg_store):
            queued = asyncio.gather(
                pg_store.write(runs("n4", insert("n4"))),
                pg_store.write(runs("fails", fails)),
                pg_store.write(runs("n5", insert("n5"))),
                return_exceptions=True,
            )
        results = await queued
        assert results[0] is None and isinstance(results[1], LookupError) and results[2] is None
        async with asyncio.timeout(10):
            while len(heard.tasks) < 5:
                heard.changed.clear()
                await heard.changed.wait()
        await asyncio.sleep(0.3)  # anything more would have come by now
    finally:
        stopping.set()
        await follower
        await other.close()
    assert sorted(heard.tasks) == ["n1", "n2", "n3", "n4", "n5"]


@pytest.mark.asyncio
async def test_a_rerunnable_that_raises_undoes_its_own_writes_without_a_rerun(pg_store: PostgresStore) -> None:
    """An exception of the function's own (a domain error) is known at once: its statements
    are rolled back to its savepoint and the run goes on, nothing run twice."""
    runs = Runs()
    before = pg_store.stats()

    def raises(tx: WriteTx) -> None:
        tx.set_meta("undone", "1")
        raise ValueError("no")

    results = await asyncio.gather(
        pg_store.write(runs("first", raises)),  # the run's first: its savepoint is the run's
        pg_store.write(runs("kept", lambda tx: tx.set_meta("kept", "1"))),
        pg_store.write(runs("middle", raises)),
        pg_store.write(runs("last", lambda tx: tx.set_meta("last", tx.get_meta("kept") or "?"))),
        return_exceptions=True,
    )
    assert isinstance(results[0], ValueError) and isinstance(results[2], ValueError)
    assert results[1] is None and results[3] is None
    assert await pg_store.read(lambda tx: [tx.get_meta(k) for k in ("undone", "kept", "last")]) == [None, "1", "1"]
    assert runs.count == {"first": 1, "kept": 1, "middle": 1, "last": 1}
    assert pg_store.stats().reruns == before.reruns


@pytest.mark.asyncio
async def test_rerunnable_and_settled_functions_interleave_in_order(pg_store: PostgresStore) -> None:
    """A settled function after a run of Rerunnable ones settles the run first, and sees it."""
    runs = Runs()

    def append(mark: str) -> Callable[[WriteTx], str]:
        def body(tx: WriteTx) -> str:
            value = (tx.get_meta("trail") or "") + mark
            tx.set_meta("trail", value)
            return value

        return body

    results = await asyncio.gather(
        pg_store.write(runs("a", append("a"))),
        pg_store.write(runs("b", append("b"))),
        pg_store.write(append("C")),  # settled
        pg_store.write(runs("d", append("d"))),
        pg_store.write(append("E")),
    )
    assert results == ["a", "ab", "abC", "abCd", "abCdE"]
    assert runs.count == {"a": 1, "b": 1, "d": 1}


@pytest.mark.asyncio
async def test_a_rerunnable_that_must_wait_for_a_lock_settles_its_run_first(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """A function about to wait for a row another transaction locked first commits the ones
    before it (`release`). In a run of Rerunnable functions they are not settled yet: the run
    is run again, settled, and then the function commits them and waits as any other."""
    (task,) = await _queue(pg_store, make_agent, make_task, 1)
    other = await PostgresStore.open(url)
    locked, go = threading.Event(), threading.Event()
    runs = Runs()
    before = pg_store.stats()

    def hold(tx: WriteTx) -> None:
        tx.get_task(task.tenant, task.task_id)  # locks the row until this write commits
        locked.set()
        assert go.wait(10)

    def touch(tx: WriteTx) -> str:
        found = tx.get_task(task.tenant, task.task_id)
        assert found is not None
        tx.update_task(dataclasses.replace(found, status_reason="touched"))
        return found.task_id

    try:
        holder = asyncio.ensure_future(other.write(hold))
        assert await asyncio.to_thread(locked.wait, 10)
        batch = asyncio.gather(
            pg_store.write(runs("before", lambda tx: tx.set_meta("before", "1"))),
            pg_store.write(runs("touch", touch)),
        )
        await asyncio.sleep(0.2)  # the batch is waiting for the lock by now
        seen_meanwhile = await pg_store.read(lambda tx: tx.get_meta("before"))
        go.set()
        results = await asyncio.wait_for(batch, 30)
        await holder
    finally:
        go.set()
        await other.close()
    assert results == [None, task.task_id]
    assert seen_meanwhile == "1"  # committed before the wait, as release does
    assert runs.count == {"before": 2, "touch": 2}
    assert pg_store.stats().reruns > before.reruns
    stored = await pg_store.read(lambda tx: tx.get_task(task.tenant, task.task_id))
    assert stored is not None and stored.status_reason == "touched"


@pytest.mark.asyncio
async def test_a_task_write_and_its_event_stand_or_fall_together(
    pg_store: PostgresStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """A task's write and the event after it go as one statement (WITH_EVENT): the event is
    stored only with its write, and a write that finds no row still fails its function."""
    await pg_store.write(lambda tx: tx.insert_agent(make_agent()))
    ghost = make_task("never-inserted")

    def event(task: Task, sequence: int, status: TaskStatus) -> TaskEvent:
        return TaskEvent(task.tenant, task.task_id, sequence, EventType.STATUS, status, task.updated_at, {})

    def insert_two(tx: WriteTx) -> None:
        for name in ("a", "b"):
            task = tx.insert_task(make_task(name))
            tx.append_event(event(task, 1, TaskStatus.QUEUED))

    def start_a_then_note_b(tx: WriteTx) -> None:
        a = tx.get_task("tenant-a", "a")
        assert a is not None
        running = dataclasses.replace(a, status=TaskStatus.RUNNING, last_sequence=2)
        tx.update_task(running)
        tx.append_event(event(a, 2, TaskStatus.RUNNING))
        tx.update_task(dataclasses.replace(running, status_reason="twice"))
        tx.append_event(event(a, 3, TaskStatus.RUNNING))  # not the first after its write: alone
        b = tx.get_task("tenant-a", "b")
        assert b is not None
        tx.update_task(dataclasses.replace(b, status_reason="noted"))
        tx.append_event(event(a, 4, TaskStatus.RUNNING))  # another task's event: sent apart

    def ghost_with_event(tx: WriteTx) -> None:
        tx.set_meta("undone", "1")
        tx.update_task(ghost)
        tx.append_event(event(ghost, 1, TaskStatus.RUNNING))

    results = await asyncio.gather(
        pg_store.write(insert_two),
        pg_store.write(start_a_then_note_b),
        pg_store.write(ghost_with_event),
        return_exceptions=True,
    )
    assert results[:2] == [None, None]
    assert isinstance(results[2], LookupError)

    def stored(tx: ReadTx) -> list[Any]:
        tasks = [tx.get_task("tenant-a", name) for name in ("a", "b", "never-inserted")]
        events = [[e.sequence for e in tx.events_after("tenant-a", name, 0, 10)] for name in ("a", "b", ghost.task_id)]
        return [[(t.status, t.status_reason) if t else None for t in tasks], events, tx.get_meta("undone")]

    found = await pg_store.read(stored)
    assert found == [
        [(TaskStatus.RUNNING, "twice"), (TaskStatus.QUEUED, "noted"), None],
        [[1, 2, 3, 4], [1], []],
        None,
    ]


@pytest.mark.asyncio
async def test_a_row_whose_agent_or_task_was_deleted_meanwhile_is_not_found_not_an_integrity_error(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Another server deletes an agent between this server's unlocked read of it and the INSERT
    of its new task: the foreign key refuses the INSERT, and the caller hears AGENT_NOT_FOUND
    (an event for a task deleted with it: TASK_NOT_FOUND), not an internal error."""
    agent = make_agent()
    await pg_store.write(lambda tx: tx.insert_agent(agent))
    task = make_task("doomed")
    read = threading.Event()
    deleted = threading.Event()

    def submit_after_the_delete(tx: WriteTx) -> Task:
        assert tx.get_agent(agent.tenant, agent.agent_id) is not None  # as Submit reads it: no lock
        read.set()
        deleted.wait(10)
        return tx.insert_task(task)

    def delete_elsewhere() -> None:
        read.wait(10)
        with connect(url) as other:  # another server's connection
            other.execute("DELETE FROM agents WHERE agent_id = %s", (agent.agent_id,))
        deleted.set()

    deleter = threading.Thread(target=delete_elsewhere)
    deleter.start()
    with pytest.raises(AgentNotFound) as caught:
        await pg_store.write(submit_after_the_delete)
    deleter.join()
    assert agent.agent_id in str(caught.value)

    await pg_store.write(lambda tx: tx.insert_agent(agent))
    stored = await pg_store.write(lambda tx: tx.insert_task(make_task("kept")))
    with connect(url) as other:
        other.execute("DELETE FROM tasks WHERE task_id = %s", (stored.task_id,))
    event = TaskEvent(stored.tenant, stored.task_id, 99, EventType.STATUS, stored.status, stored.created_at)
    with pytest.raises(TaskNotFound):
        await pg_store.write(lambda tx: tx.append_event(event))


@pytest.mark.asyncio
async def test_agent_rows_read_in_a_batch_follow_its_own_agent_writes(
    pg_store: PostgresStore, make_agent: MakeAgent
) -> None:
    """A batch reads each agent once and remembers it: its own agent writes, and a failed
    function's rolled-back ones, must show in what the functions after them read."""
    agent = make_agent()
    await pg_store.write(lambda tx: tx.insert_agent(agent))
    paused = dataclasses.replace(agent, status=AgentStatus.PAUSED)

    def status(tx: WriteTx) -> AgentStatus | None:
        found = tx.get_agent(agent.tenant, agent.agent_id)
        return None if found is None else found.status

    def pause_then_fail(tx: WriteTx) -> None:
        status(tx)
        tx.update_agent(paused)
        assert status(tx) is AgentStatus.PAUSED
        raise ValueError("refused")

    def pause(tx: WriteTx) -> AgentStatus | None:
        tx.update_agent(paused)
        return status(tx)

    def delete(tx: WriteTx) -> None:
        tx.delete_agent(agent.tenant, agent.agent_id)

    results = await asyncio.gather(
        pg_store.write(status),
        pg_store.write(pause_then_fail),
        pg_store.write(status),
        pg_store.write(pause),
        pg_store.write(status),
        pg_store.write(delete),
        pg_store.write(status),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert [results[i] for i in (0, 2, 3, 4, 6)] == [
        AgentStatus.ACTIVE,
        AgentStatus.ACTIVE,
        AgentStatus.PAUSED,
        AgentStatus.PAUSED,
        None,
    ]


@pytest.mark.asyncio
async def test_two_servers_batches_locking_tasks_in_opposite_orders_do_not_deadlock(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """Server A's batch locks task X, then a later function of it wants Y; server B's locked Y,
    then wants X. Both waiting while holding their batch's earlier locks was a deadlock (one
    side failed after deadlock_timeout); a function that would wait first commits the ones
    before it, so both batches go through."""
    x, y = await _queue(pg_store, make_agent, make_task, 2)
    other = await PostgresStore.open(url)
    a_locked, b_locked = threading.Event(), threading.Event()

    def lock_then_wait(task: Task, mine: threading.Event, theirs: threading.Event) -> Callable[[WriteTx], None]:
        def op(tx: WriteTx) -> None:
            tx.get_task(task.tenant, task.task_id)  # locks the row until the batch commits
            mine.set()
            assert theirs.wait(10)

        return op

    def touch(task: Task) -> Callable[[WriteTx], str]:
        def op(tx: WriteTx) -> str:
            found = tx.get_task(task.tenant, task.task_id)
            assert found is not None
            tx.update_task(dataclasses.replace(found, progress=found.progress))
            return found.task_id

        return op

    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                pg_store.write(lock_then_wait(x, a_locked, b_locked)),
                pg_store.write(touch(y)),
                other.write(lock_then_wait(y, b_locked, a_locked)),
                other.write(touch(x)),
                return_exceptions=True,
            ),
            timeout=30,
        )
    finally:
        await other.close()
    assert results == [None, y.task_id, None, x.task_id]


@pytest.mark.asyncio
async def test_tasks_a_batch_inserts_are_numbered_in_submission_order(
    pg_store: PostgresStore, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """The writer numbers inserted tasks from seqs it takes per batch (no RETURNING each): the
    numbers are the stored ones, rise in submission order, also past the first block taken."""
    await pg_store.write(lambda tx: tx.insert_agent(make_agent()))
    results = await asyncio.gather(
        pg_store.write(lambda tx: tx.insert_task(make_task("one"))),
        pg_store.write(lambda tx: [tx.insert_task(make_task(f"many-{i}")) for i in range(10)]),
        pg_store.write(lambda tx: tx.insert_task(make_task("last"))),
    )
    inserted = [results[0], *results[1], results[2]]
    seqs = [task.seq for task in inserted]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 0
    stored = await pg_store.read(lambda tx: [tx.get_task(t.tenant, t.task_id) for t in inserted])
    assert [task.seq for task in stored if task is not None] == seqs


@pytest.mark.asyncio
async def test_a_write_after_the_connection_was_killed_still_commits(pg_store: PostgresStore, url: str) -> None:
    """A server restart (or an idle timeout) breaks the writer's connection while idle: the next
    batch finds out at BEGIN, before running anything, and goes to a fresh connection."""
    await pg_store.write(lambda tx: tx.set_meta("before", "1"))
    pid = await pg_store.write(lambda tx: tx._conn.info.backend_pid)  # type: ignore[attr-defined]
    with connect(url) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        # Killed a while ago, as by a restart: it is gone before the next write.
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.01)
    await pg_store.write(lambda tx: tx.set_meta("after", "1"))
    assert await pg_store.read(lambda tx: tx.get_meta("after")) == "1"


@pytest.mark.asyncio
async def test_read_functions_see_one_snapshot(pg_store: PostgresStore, url: str) -> None:
    entered, release = threading.Event(), threading.Event()

    def look_twice(tx: ReadTx) -> tuple[str | None, str | None]:
        first = tx.get_meta("k")
        entered.set()
        release.wait(30)
        return first, tx.get_meta("k")

    await pg_store.write(lambda tx: tx.set_meta("k", "old"))
    reading = asyncio.ensure_future(pg_store.read(look_twice))
    await asyncio.to_thread(entered.wait, 30)
    await pg_store.write(lambda tx: tx.set_meta("k", "new"))
    release.set()
    assert await reading == ("old", "old")


@pytest.mark.asyncio
async def test_views_refuse_naive_datetimes_and_use_after_their_function(
    pg_store: PostgresStore, make_agent: MakeAgent
) -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="naive"):
        await pg_store.write(lambda tx: tx.insert_agent(make_agent(created_at=datetime(2026, 1, 1))))
    kept: list[ReadTx] = []
    await pg_store.read(kept.append)
    with pytest.raises(RuntimeError, match="after its function returned"):
        kept[0].get_meta("x")


@pytest.mark.asyncio
async def test_task_lookups_stay_one_row_as_the_table_grows(
    pg_store: PostgresStore, url: str, make_agent: MakeAgent, make_task: MakeTask
) -> None:
    """A plan PostgreSQL made while the table was nearly empty must not stay: reading one task
    walked all the tenant's tasks once the server had prepared the statement (generic plan)."""
    agent = make_agent()
    await pg_store.write(lambda tx: tx.insert_agent(agent))
    first = await pg_store.write(lambda tx: tx.insert_task(make_task("first")))
    for _ in range(20):  # prepared, and planned, while the table holds one task
        await pg_store.read(lambda tx: tx.get_task(first.tenant, first.task_id))
        await pg_store.write(lambda tx: tx.update_task(first))
    await pg_store.write(lambda tx: [tx.insert_task(make_task(f"more-{i}")) for i in range(3000)])

    def walked() -> int:
        time.sleep(1.2)  # a backend reports its statistics at most once a second
        with connect(url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
                "WHERE schemaname = current_schema() AND indexrelname = 'tasks_by_agent'"
            ).fetchone()
        return int(row[0]) if row else 0

    before = await asyncio.to_thread(walked)
    for _ in range(20):
        await pg_store.read(lambda tx: tx.get_task(first.tenant, first.task_id))
        await pg_store.write(lambda tx: tx.update_task(first))
    after = await asyncio.to_thread(walked)
    assert after - before < 3000, f"{after - before} index entries read for 40 one-row lookups"
