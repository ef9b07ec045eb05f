"""Helpers the tests share: settings for a test service, gRPC stubs with a credential, and the
rich error details of a failed call."""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import psycopg
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from psycopg import sql

from agenttasks.core import lifecycle
from agenttasks.core.model import TaskResult, utcnow
from agenttasks.core.ports import WriteTx, save
from agenttasks.settings import Settings
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import agent_service_pb2_grpc, task_service_pb2_grpc
from agenttasks.v1 import task_service_pb2 as tpb


def write_output(tx: WriteTx, task_id: str, text: str, result: str = "") -> None:
    """Give a stored task `text` as its output the way a worker's report does (an output event
    and the task's count), and a result, inside a store write: for tests of big tasks."""
    task = tx.get_task("default", task_id)
    assert task is not None
    now = utcnow()
    task, _ = save(tx, lifecycle.output(task, text, len(text.encode()), now))
    if result:
        tx.update_task(replace(task, result=TaskResult(result)))


def make_settings(db: Path | str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "db": str(db),
        "grpc_port": 0,
        "gateway": False,
        "public_base_url": "http://api.test",
        "shutdown_grace_seconds": 1.0,
        # In-process tests stop a service after every test: no notice period for clients to move.
        "drain_notice_seconds": 0.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# --- databases of each backend ---

BACKENDS = ["sqlite", "postgresql"]
"""Every storage backend; fixtures that give a test its database are parametrized over these."""

POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
"""The local PostgreSQL every machine of this project runs (CI's too): trust auth, user postgres."""
_MAINTENANCE_DB = "test"


class PostgresDatabases:
    """Fresh PostgreSQL stores for tests: one database per test session, and in it one new
    schema per store, named in the URL's search_path (`?options=-csearch_path=...`), migrated
    when it is made and dropped after its test however the test ends. Names are random, so test
    runs beside each other (two engineers, two sessions) never meet.

    Measured on this machine, a schema and its migrations cost about 40 ms where a database
    cloned from a migrated template cost 340 ms (CREATE DATABASE writes or checkpoints the whole
    template). A helper thread keeps a few migrated schemas ready and drops used ones, so a test
    rarely waits for either; whatever it has not dropped goes with the session's database."""

    READY = 2

    def __init__(self) -> None:
        self._database: str | None = None
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._work: queue.Queue[str | None] = queue.Queue()  # "" = make one more; a URL = drop it
        self._helper: threading.Thread | None = None

    def _connect(self, database: str) -> psycopg.Connection[tuple[object, ...]]:
        try:
            conn = psycopg.connect(f"{POSTGRES_SERVER}/{database}", autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise RuntimeError(
                f"the PostgreSQL tests need the server at {POSTGRES_SERVER} (user postgres, trust auth): {error}"
            ) from error
        # A store a failing test left open must not make its schema's drop wait for ever.
        conn.execute("SET lock_timeout = '20s'")
        return conn

    def _session_database(self) -> str:
        if self._database is None:
            name = f"agenttasks_tests_{secrets.token_hex(6)}"
            with self._connect(_MAINTENANCE_DB) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self._database = name
        return self._database

    def _make(self, conn: psycopg.Connection[tuple[object, ...]], *, migrated: bool) -> str:
        from agenttasks.store.postgres_migrations import migrate

        schema = f"t_{secrets.token_hex(6)}"
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        if migrated:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            try:
                migrate(conn)
            finally:
                conn.execute("RESET search_path")
        return f"{POSTGRES_SERVER}/{self._session_database()}?options=-csearch_path%3D{schema}"

    def _help(self) -> None:
        """The helper thread: keeps READY migrated schemas made, drops the used ones."""
        try:
            with self._connect(self._session_database()) as conn:
                for _ in range(self.READY):
                    self._ready.put(self._make(conn, migrated=True))
                while (item := self._work.get()) is not None:
                    if item:
                        schema = item.rsplit("%3D", 1)[1]
                        # One a leaky test still holds goes with the session's database instead.
                        with suppress(psycopg.errors.LockNotAvailable):
                            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
                    else:
                        self._ready.put(self._make(conn, migrated=True))
        except BaseException as error:  # the next test fails with it rather than waiting
            self._ready.put(error)
            raise

    def create(self, *, migrated: bool = True) -> str:
        """The URL of a new, empty schema, with the agenttasks tables unless `migrated` is False."""
        if not migrated:
            with self._connect(self._session_database()) as conn:
                return self._make(conn, migrated=False)
        if self._helper is None:
            self._session_database()
            self._helper = threading.Thread(target=self._help, name="postgres-test-schemas", daemon=True)
            self._helper.start()
        made = self._ready.get(timeout=60)
        if isinstance(made, BaseException):
            self._ready.put(made)
            raise RuntimeError("making PostgreSQL test schemas failed") from made
        self._work.put("")
        return made

    def drop(self, url: str) -> None:
        self._work.put(url)

    @contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """A new store's URL for the block, dropped when it ends however it ends."""
        url = self.create(migrated=migrated)
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        """Drops the session's database (FORCE: whatever a crashed test left connected)."""
        if self._helper is not None:
            self._work.put(None)
            self._helper.join(60)
            self._helper = None
        if self._database is not None:
            with self._connect(_MAINTENANCE_DB) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self._database)))
            self._database = None


@dataclass
class Api:
    """Stubs on one channel that send one credential."""

    channel: grpc.aio.Channel
    tasks: task_service_pb2_grpc.TaskServiceStub
    agents: agent_service_pb2_grpc.AgentServiceStub
    metadata: tuple[tuple[str, str], ...]

    async def create_agent(self, name: str = "agent", **fields: object) -> str:
        answer = await self.agents.CreateAgent(apb.CreateAgentRequest(name=name, **fields), metadata=self.metadata)
        return str(answer.agent.agent_id)

    async def submit(self, agent_id: str, message: str = "do it", **fields: object) -> tpb.SubmitResponse:
        request = tpb.SubmitRequest(agent_id=agent_id, message=message, **fields)
        answer: tpb.SubmitResponse = await self.tasks.Submit(request, metadata=self.metadata)
        return answer


def api_for(address: str, credential: str, header: str = "authorization") -> Api:
    channel = grpc.aio.insecure_channel(address)
    value = f"Bearer {credential}" if header == "authorization" else credential
    return Api(
        channel=channel,
        tasks=task_service_pb2_grpc.TaskServiceStub(channel),
        agents=agent_service_pb2_grpc.AgentServiceStub(channel),
        metadata=((header, value),),
    )


def error_info(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """(code, ErrorInfo reason, BadRequest field names) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, fields = "", []
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return error.code(), reason, fields
