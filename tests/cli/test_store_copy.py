"""`agenttasks store copy SRC DST`: a real SQLite store, filled through the real service, copied
by the real command into a fresh PostgreSQL schema on the local server; then the copy must read
the same, record for record, and serve: copied keys authenticate, copied queued tasks go to a
worker in their order, and new tasks go after every copied one."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key, revoke_api_key
from agenttasks.cli.store_cmds import ProgressLines
from agenttasks.core.model import Agent, EventType, Role, Task, TaskEvent, TaskStatus, utcnow
from agenttasks.core.ports import ReadTx, Store
from agenttasks.store import SqliteStore, open_store
from agenttasks.store.copy import TABLES, copy_store
from agenttasks.store.migrations import applied_migrations, load_migrations, migrate
from agenttasks.store.sql import load_queries
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import Api, PostgresDatabases, api_for, make_settings

from .support import failed, free_port, ok, run_cli

TENANTS = ("default", "other")
# The server's generated secrets and marks, and the row a key revocation moves (REVOCATIONS_META).
META = ("jwt_hs256_secret", "page_token_secret", "bootstrap_admin_key_issued", "api_key_revocations")
# Long enough that nothing expires or is retried while a test runs: the copy must see the
# same rows as the reads before and after it.
QUIET = {"lease_seconds": 3600.0, "webhook_allow": "127.0.0.0/8", "webhook_retry_schedule": [0]}


def copy(source: Path | str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("store", "copy", str(source), target, *extra, timeout=120)


def with_password(url: str) -> str:
    """The same URL with a password in it (trust auth ignores it): it must never be printed."""
    return url.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@", 1)


def has_tables(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('agents') IS NOT NULL").fetchone()
    return bool(row and row[0])


def sqlite_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}  # noqa: S608
    finally:
        conn.close()


async def records(store: Store) -> dict[str, Any]:
    """Everything a client or a server reads of the store, per tenant, as records."""

    def read(tx: ReadTx) -> dict[str, Any]:
        found: dict[str, Any] = {"meta": {name: tx.get_meta(name) for name in META}}
        for tenant in TENANTS:
            agents = tx.list_agents(tenant, after_created=None, limit=1000)
            tasks = {}
            for agent in agents:
                for task in tx.list_tasks(tenant, agent.agent_id, status=None, before_seq=None, limit=1000):
                    tasks[task.task_id] = {
                        "task": task,
                        "events": tx.events_after(tenant, task.task_id, 0, 10_000),
                        "output": tx.task_output(tenant, task.task_id, task.output_after),
                        "deliveries": tx.task_deliveries(tenant, task.task_id),
                    }
                found[f"{tenant}/{agent.agent_id}/queued at or above"] = [
                    tx.queued_at_or_above(tenant, agent.agent_id, priority) for priority in range(1, 11)
                ]
            found[tenant] = {
                "agents": agents,
                "tasks": tasks,
                "keys": tx.list_api_keys(tenant),
                "signing secret": tx.get_signing_secret(tenant),
            }
        return found

    return await store.read(read)


async def statuses(api: Api, task_ids: list[str]) -> dict[str, tpb.GetStatusResponse]:
    found = {}
    for task_id in task_ids:
        request = tpb.GetStatusRequest(agent_id="-", task_id=task_id)
        found[task_id] = await api.tasks.GetStatus(request, metadata=api.metadata)
    return found


@dataclass
class Source:
    """A SQLite store with a history, and the running service that wrote it."""

    path: Path
    service: Service
    admin: Api
    client: Api
    other: Api
    busy: str  # an agent whose worker holds its tasks
    backlog: str  # an agent with queued tasks and no worker
    backlog_worker_key: str
    queued: list[str]  # the backlog's queued tasks, in the order they must be dispatched
    task_ids: list[str]  # the default tenant's
    other_task: str  # the other tenant's
    deleted_seq: int  # the seq of a task deleted with its agent: the highest ever handed out


async def _ack(worker: RawWorker, **report: Any) -> None:
    ack = await worker.send(**report)
    assert ack.code == 0, ack


async def _build(path: Path) -> AsyncIterator[Source]:
    async with Service(make_settings(path, **QUIET)) as service:
        assert service.bootstrap_key is not None
        admin = api_for(service.address, service.bootstrap_key)
        client = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT, "app"))
        other = api_for(service.address, await create_api_key(service.store, "other", Role.CLIENT))
        revoked = await create_api_key(service.store, "default", Role.CLIENT, "old")
        await revoke_api_key(service.store, revoked.split("_")[1])
        busy = await client.create_agent("busy", metadata={"team": "search"})
        backlog = await client.create_agent("backlog", description="waits for a worker")
        busy_key = await create_api_key(service.store, "default", Role.WORKER, "busy", busy)
        backlog_key = await create_api_key(service.store, "default", Role.WORKER, "backlog", backlog)
        worker = await RawWorker(service.address, busy_key, busy, capacity=4, heartbeat=False).start()
        try:
            ids = []

            async def claimed(message: str) -> wpb.Assignment:
                ids.append((await client.submit(busy, message, metadata={"n": len(ids)})).task_id)
                assignment = await worker.next_assignment()
                assert assignment.task.task_id == ids[-1]
                return assignment

            done = await claimed("finish me")
            await _ack(worker, progress=wpb.ReportProgress(task=ref(done), percent=50.5, text="half"))
            await _ack(worker, output=wpb.AppendOutput(task=ref(done), chunk="hello, "))
            await _ack(worker, output=wpb.AppendOutput(task=ref(done), chunk="wörld \u2603"))
            await _ack(worker, complete=wpb.CompleteTask(task=ref(done), text="done"))
            broken = await claimed("fail me")
            await _ack(worker, output=wpb.AppendOutput(task=ref(broken), chunk="oops"))
            await _ack(worker, fail=wpb.FailTask(task=ref(broken), code="E_BROKE", message="it broke"))
            asking = await claimed("ask me")
            await _ack(worker, request_input=wpb.RequestInput(task=ref(asking), prompt="your name?"))
            request = tpb.SendMessageRequest(agent_id=busy, task_id=ids[-1], message="Ada")
            await client.tasks.SendMessage(request, metadata=client.metadata)
            await asyncio.wait_for(worker.deliveries.get(), 30)
            waiting = await claimed("wait for input")
            await _ack(worker, request_input=wpb.RequestInput(task=ref(waiting), prompt="go on?"))
            running = await claimed("keep running")
            await _ack(worker, output=wpb.AppendOutput(task=ref(running), chunk="partial"))

            # The backlog, in the order a worker must get it: priority first, then FIFO.
            first = (await client.submit(backlog, "first at 5", request_id="req-1")).task_id
            urgent = (await client.submit(backlog, "urgent", priority=9)).task_id
            second = (await client.submit(backlog, "second at 5")).task_id
            hook = f"http://127.0.0.1:{free_port()}/hook"
            cancelled = (await client.submit(backlog, "hooked", callback_mode="webhook", webhook_url=hook)).task_id
            await client.tasks.Cancel(tpb.CancelRequest(agent_id=backlog, task_id=cancelled), metadata=client.metadata)
            theirs = await other.create_agent("theirs")
            other_task = (await other.submit(theirs, "another tenant's")).task_id

            # The last task of all goes with its agent: its seq stays used (AUTOINCREMENT).
            doomed = await client.create_agent("doomed")
            gone = (await client.submit(doomed, "deleted with its agent")).task_id
            gone_task = await service.store.read(lambda tx: tx.get_task("default", gone))
            assert gone_task is not None
            await client.agents.DeleteAgent(apb.DeleteAgentRequest(agent_id=doomed), metadata=client.metadata)

            # The delivery of the cancellation fails (nothing listens) and is dead: nothing
            # changes any more while the copy runs.
            for _ in range(300):
                deliveries = await service.store.read(lambda tx: tx.task_deliveries("default", cancelled))
                if deliveries and deliveries[0].state.value == "dead":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the delivery is not dead: {deliveries}")
            yield Source(
                path=path,
                service=service,
                admin=admin,
                client=client,
                other=other,
                busy=busy,
                backlog=backlog,
                backlog_worker_key=backlog_key,
                queued=[urgent, first, second],
                task_ids=[*ids, first, urgent, second, cancelled],
                other_task=other_task,
                deleted_seq=gone_task.seq,
            )
        finally:
            await worker.close()
            for api in (admin, client, other):
                await api.channel.close()


@pytest_asyncio.fixture
async def source(tmp_path: Path) -> AsyncIterator[Source]:
    async for built in _build(tmp_path / "source.db"):
        yield built


@pytest.fixture
def target(postgres_databases: PostgresDatabases) -> Any:
    """A new PostgreSQL schema without the agenttasks tables: the copy must make them."""
    with postgres_databases.database(migrated=False) as url:
        yield url


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_the_copy_reads_the_same_and_serves(source: Source, target: str) -> None:
    before = await records(source.service.store)
    states = {entry["task"].status for entry in before["default"]["tasks"].values()}
    assert states >= {"queued", "running", "awaiting_input", "completed", "failed", "cancelled"}, states
    shown = await statuses(source.admin, source.task_ids)
    shown_to_other = await statuses(source.other, [source.other_task])

    # While the source's server runs (its tasks are still held): one snapshot of a live file.
    result = await asyncio.to_thread(copy, source.path, with_password(target))
    out = ok(result)
    assert await records(source.service.store) == before, "the source changed while it was copied"

    counts = sqlite_counts(source.path)
    assert counts["tasks"] == len(source.task_ids) + 1 and counts["meta"] == len(META)
    summary = ", ".join(f"{counts[table]} {table}" for table in TABLES)
    assert out.splitlines() == [f"copied {summary} into {with_password(target).replace('s3cret-pw', '***')}"]
    assert result.stderr.splitlines() == [f"copied {table}: {counts[table]} rows" for table in TABLES]
    assert "s3cret-pw" not in result.stdout + result.stderr

    copied = await open_store(target, create=False)
    try:
        after = await records(copied)
    finally:
        await copied.close()
    assert after == before  # every record, seq and all; events, output, deliveries, keys, meta
    assert after["default"]["tasks"][source.task_ids[0]]["output"] == "hello, wörld \u2603"
    assert after[f"default/{source.backlog}/queued at or above"][:10] == [3, 3, 3, 3, 3, 1, 1, 1, 1, 0]

    async with Service(make_settings(target, **QUIET)) as copy_service:
        assert copy_service.bootstrap_key is None, "the copy made a second first-start admin key"
        # The source's keys, not new ones: the admin key, a client key and a worker key.
        admin = api_for(copy_service.address, source.admin.metadata[0][1].removeprefix("Bearer "))
        client = api_for(copy_service.address, source.client.metadata[0][1].removeprefix("Bearer "))
        other = api_for(copy_service.address, source.other.metadata[0][1].removeprefix("Bearer "))
        try:
            assert await statuses(admin, source.task_ids) == shown
            assert await statuses(other, [source.other_task]) == shown_to_other
            again = await client.submit(source.backlog, "first at 5", request_id="req-1")
            assert again.task_id == source.queued[1], "the idempotency record was not copied"

            worker = await RawWorker(copy_service.address, source.backlog_worker_key, source.backlog).start()
            try:
                order = []
                for _ in source.queued:
                    assignment = await worker.next_assignment()
                    order.append(assignment.task.task_id)
                    await _ack(worker, complete=wpb.CompleteTask(task=ref(assignment), text="moved"))
                assert order == source.queued
                new = await client.submit(source.backlog, "after the move")
                assert (await worker.next_assignment()).task.task_id == new.task_id
            finally:
                await worker.close()
            task = await copy_service.store.read(lambda tx: tx.get_task("default", new.task_id))
            assert task is not None and task.seq > source.deleted_seq, "a seq was handed out twice"
        finally:
            for api in (admin, client, other):
                await api.channel.close()


@pytest.mark.asyncio
async def test_json_says_what_was_copied(source: Source, target: str) -> None:
    document = json.loads(ok(await asyncio.to_thread(copy, source.path, with_password(target), "--json")))
    assert document == {
        "source": str(source.path),
        "target": with_password(target).replace("s3cret-pw", "***"),
        "copied": sqlite_counts(source.path),
    }
    assert list(document["copied"]) == list(TABLES)


# --- refusals: one line, exit 1, the target as it was ---


async def _small_source(path: Path) -> None:
    """A store with one agent and three tasks, written through the store API."""
    async with await SqliteStore.open(path) as store:
        now = utcnow()
        agent = Agent(tenant="t", agent_id="agent-1", name="a", created_at=now, updated_at=now)
        await store.write(lambda tx: tx.insert_agent(agent))
        for n in range(3):
            task = Task(tenant="t", task_id=f"task-{n}", agent_id="agent-1", message=f"m{n}", created_at=now)
            await store.write(lambda tx, task=task: tx.insert_task(task))


@pytest.mark.asyncio
async def test_a_target_with_data_is_refused(tmp_path: Path, target: str) -> None:
    await _small_source(tmp_path / "a.db")
    ok(await asyncio.to_thread(copy, tmp_path / "a.db", target))
    await _small_source(tmp_path / "b.db")
    line = failed(await asyncio.to_thread(copy, tmp_path / "b.db", with_password(target)), 1)
    assert line == (
        f"agenttasks: the PostgreSQL database {with_password(target).replace('s3cret-pw', '***')} already holds "
        "agenttasks data (agents, tasks); copy into a new, empty database"
    )
    copied = await open_store(target, create=False)
    try:
        tasks = await copied.read(lambda tx: tx.list_tasks("t", "agent-1", status=None, before_seq=None, limit=10))
    finally:
        await copied.close()
    assert len(tasks) == 3, "the refused copy wrote into the target"


def test_a_missing_source_is_refused_and_nothing_is_made(tmp_path: Path, target: str) -> None:
    line = failed(copy(tmp_path / "nothing.db", target), 1)
    assert (
        line
        == f"agenttasks: no SQLite database at {tmp_path / 'nothing.db'}: give the file 'agenttasks serve --db' uses"
    )
    assert not (tmp_path / "nothing.db").exists()
    assert not has_tables(target)


def test_source_and_target_must_be_of_their_kinds(tmp_path: Path, target: str) -> None:
    line = failed(copy(with_password(target), target), 1)
    assert "the source must be a SQLite store" in line and "s3cret-pw" not in line
    line = failed(copy(tmp_path / "a.db", str(tmp_path / "b.db")), 1)
    assert "the target must be a postgresql://" in line
    assert "the source must be a SQLite file" in failed(copy(":memory:", target), 1)


@pytest.mark.asyncio
async def test_a_copy_that_fails_midway_leaves_the_target_as_it_was(tmp_path: Path, target: str) -> None:
    """An event whose task is gone (written with foreign keys off) breaks the copy after the
    agents and tasks went in: they, and the schema, must be rolled back with it."""
    path = tmp_path / "a.db"
    await _small_source(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO task_events (task_id, sequence, tenant, type, status, time, data)"
            " VALUES ('ghost', 1, 't', 'status', 'queued', 0, '{}')"
        )
    conn.close()
    result = await asyncio.to_thread(copy, path, target)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.splitlines()[-1]  # after the progress of the tables that went in
    assert line.startswith(f"agenttasks: the copy into {target} failed and was rolled back: "), line
    assert "task_events" in line
    assert not has_tables(target)


def test_an_older_source_is_migrated_first_and_a_newer_one_refused(tmp_path: Path, target: str) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, load_migrations()[:6])  # before output moved into events
    finally:
        conn.close()
    ok(copy(path, target))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert sorted(applied_migrations(conn)) == [m.version for m in load_migrations()]
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)")
    finally:
        conn.close()
    line = failed(copy(path, target), 1)
    assert "that this version of agenttasks does not know" in line, line


# --- batches and progress ---


@pytest.mark.asyncio
async def test_rows_go_in_batches_and_progress_says_so(tmp_path: Path, target: str) -> None:
    path = tmp_path / "a.db"
    await _small_source(path)
    async with await SqliteStore.open(path) as store:
        for n in range(5):
            event = TaskEvent("t", "task-0", n + 1, EventType.OUTPUT, TaskStatus.QUEUED, utcnow(), {"output": f"{n}"})
            await store.write(lambda tx, event=event: tx.append_event(event))
    told: list[tuple[str, int, int]] = []
    copied = await asyncio.to_thread(copy_store, str(path), target, batch_rows=2, progress=lambda *a: told.append(a))
    assert copied["tasks"] == 3 and copied["task_events"] == 5
    assert [t for t in told if t[0] == "task_events"] == [
        ("task_events", 2, 5),
        ("task_events", 4, 5),
        ("task_events", 5, 5),
    ]
    assert [t for t in told if t[0] == "tasks"] == [("tasks", 2, 3), ("tasks", 3, 3)]
    assert ("meta", 0, 0) in told  # an empty table is reported done too

    shown = io.StringIO()
    every_time = ProgressLines(shown, every=0)
    for told_once in told[:4]:
        every_time(*told_once)
    assert shown.getvalue().splitlines() == [
        "copied agents: 1 rows",
        "copying tasks: 2 of 3 rows",
        "copied tasks: 3 rows",
        "copying task_events: 2 of 5 rows",
    ]
    shown = io.StringIO()
    seldom = ProgressLines(shown, every=timedelta(hours=1).total_seconds())
    for told_once in told:
        seldom(*told_once)
    assert not [line for line in shown.getvalue().splitlines() if line.startswith("copying")]


# --- the statements ---


def test_every_statement_of_the_copy_plans_against_the_schemas(tmp_path: Path, target: str) -> None:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    try:
        migrate(conn)
        for name, query in load_queries("copy_sqlite").items():
            conn.execute(f"EXPLAIN {query}")  # prepares without running
            assert sqlite3.complete_statement(query), name
    finally:
        conn.close()
    with psycopg.connect(target, autocommit=True) as pg:
        from agenttasks.store.postgres_migrations import migrate as migrate_postgres

        migrate_postgres(pg)
        for name, query in load_queries("copy_postgresql").items():
            params = dict.fromkeys(re.findall(r"%\((\w+)\)s", query))
            try:
                pg.execute(f"EXPLAIN {query}", params)  # type: ignore[call-overload]
            except psycopg.Error as error:
                raise AssertionError(f"{name}: {error}") from error
