"""The system under test: `agenttasks serve`, exactly as a user runs it, on a fresh database.

`Server` starts the real command (gRPC on a free port, and the REST gateway through the real
Envoy when asked), reads the admin key it prints on first start, and creates an agent to submit
to. `Worker` runs `python -m bench.worker` (the Python SDK's `Worker`) as a process of its own.
`Cluster` is one or more replicas of `serve` on one database (SQLite, or a fresh PostgreSQL
database with `--db`), with a worker process connected to each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import agent_service_pb2_grpc, task_service_pb2_grpc
from bench import loadgen
from bench.plan import Context
from bench.postgres import BackendCpu, is_postgres
from bench.procs import Proc, children

STARTUP_SECONDS = 60.0
SERVER_ENV: dict[str, str] = {}
"""Settings every `serve` of the run gets, e.g. AGENTTASKS_LOG_FORMAT=json (`--log-format`)."""
# With metrics on, the bench scrapes /metrics this often, as a (busy) Prometheus would.
SCRAPE_SECONDS = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def serve_command(db: Path | str, gateway: bool) -> list[str]:
    command = [sys.executable, "-m", "agenttasks.cli.main", "serve", "--db", str(db), "--grpc-port", "0"]
    return [*command, "--http-port", "0"] if gateway else [*command, "--no-gateway"]


@dataclass(slots=True)
class Api:
    """Stubs on one channel, with the admin key as call metadata."""

    channel: grpc.aio.Channel
    tasks: task_service_pb2_grpc.TaskServiceAsyncStub
    agents: agent_service_pb2_grpc.AgentServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]


class Server:
    """`agenttasks serve` on `db` (default `workdir/agenttasks.db`). An async context manager.

    A replica started on a database another server set up gets that server's `key` and
    `agent_id`: it prints no key, and its agent already exists.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        gateway: bool = False,
        name: str = "agenttasks",
        db: str | None = None,
        key: str = "",
        agent_id: str = "",
        limits: bool = False,
        metrics: bool = False,
    ) -> None:
        """With `metrics`, the server serves /metrics and the bench scrapes it every second."""
        self.workdir = workdir
        self.gateway = gateway
        # With the server's default limits (rate, watch streams, queued tasks), not without them.
        self.limits = limits
        self.db = db or str(workdir / "agenttasks.db")
        # A clean environment: no AGENTTASKS_* of the person running the bench leaks in.
        self.proc = Proc(name, serve_command(self.db, gateway), workdir, cwd=workdir)
        self.address = ""
        self.rest_url = ""
        self.key = key
        self.agent_id = agent_id
        self.metrics = metrics
        self.metrics_url = ""
        self.scrapes = 0
        self.scrape_errors = 0
        self._scraper: asyncio.Task[None] | None = None
        self._apis: list[Api] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> dict[str, int]:
        """{role: pid} of the server and, with the gateway, its Envoy."""
        found = {"server": self.pid}
        if self.gateway:
            envoy = [pid for pid, name in children(self.pid).items() if name == "envoy"]
            if envoy:
                found["envoy"] = envoy[0]
        return found

    async def start(self) -> Server:
        self.proc.env = {k: v for k, v in self.proc.env.items() if not k.startswith("AGENTTASKS_")}
        if not self.limits:
            # The bench measures how much one server takes: one credential drives all of it.
            self.proc.env["AGENTTASKS_RATE_LIMIT_PER_SECOND"] = "0"
            self.proc.env["AGENTTASKS_MAX_WATCHES_PER_CREDENTIAL"] = "0"  # fan-out opens 10,000
            self.proc.env["AGENTTASKS_MAX_QUEUED_PER_TENANT"] = "0"  # the submit workloads queue a backlog
        self.proc.env.update(SERVER_ENV)
        if self.metrics:
            self.proc.env["AGENTTASKS_METRICS_PORT"] = str(free_port())
        await self.proc.start()
        try:
            self.address = (await self.proc.wait_for_line(r"gRPC listening on (\S+)", STARTUP_SECONDS)).group(1)
            if self.metrics:
                self.metrics_url = (await self.proc.wait_for_line(r"metrics on (\S+)", STARTUP_SECONDS)).group(1)
                self._scraper = asyncio.create_task(self._scrape(), name="bench-scrape")
            if self.gateway:
                self.rest_url = (await self.proc.wait_for_line(r"REST listening on (\S+)", STARTUP_SECONDS)).group(1)
            if not self.key:
                self.key = (await self.proc.wait_for_line(r"^admin api key: (\S+)", STARTUP_SECONDS)).group(1)
            else:  # a replica: ready once it says where its database is (the last line before serving)
                await self.proc.wait_for_line(r"^agenttasks database ", STARTUP_SECONDS)
            if not self.agent_id:
                self.agent_id = await self.create_agent("bench")
        except BaseException:
            await self.stop()
            raise
        return self

    async def _scrape(self) -> None:
        """Read /metrics every SCRAPE_SECONDS, as Prometheus would, so its cost is measured too."""

        def get() -> None:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as page:  # noqa: S310 - our own server
                page.read()

        while True:
            try:
                await asyncio.to_thread(get)
                self.scrapes += 1
            except OSError:
                self.scrape_errors += 1
            await asyncio.sleep(SCRAPE_SECONDS)

    def api(self, key: str | None = None) -> Api:
        """Stubs on a new channel (closed by `stop`), sending `key` (default the admin key)."""
        channel = loadgen.channel(self.address)
        api = Api(
            channel,
            task_service_pb2_grpc.TaskServiceStub(channel),
            agent_service_pb2_grpc.AgentServiceStub(channel),
            (("authorization", f"Bearer {key or self.key}"),),
        )
        self._apis.append(api)
        return api

    async def create_agent(self, name: str) -> str:
        api = self.api()
        answer = await api.agents.CreateAgent(apb.CreateAgentRequest(name=name), metadata=api.metadata, timeout=30)
        return str(answer.agent.agent_id)

    async def stop(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
            self._scraper = None
        for api in self._apis:
            await api.channel.close(grace=None)
        self._apis.clear()
        await self.proc.stop()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class Worker:
    """`python -m bench.worker`: one SDK worker process serving the server's agent."""

    def __init__(self, server: Server, *, capacity: int, record: Path | None = None, name: str = "worker") -> None:
        command = [
            sys.executable,
            "-m",
            "bench.worker",
            "--server",
            server.address,
            "--agent",
            server.agent_id,
            "--capacity",
            str(capacity),
        ]
        if record is not None:
            command += ["--record", str(record)]
        # The key goes by environment, not argv, so it does not show in process listings.
        self.proc = Proc(name, command, server.workdir, env={"BENCH_WORKER_KEY": server.key})

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def start(self) -> Worker:
        await self.proc.start()
        try:
            await self.proc.wait_for_line(r"^worker ready", STARTUP_SECONDS)
        except BaseException:
            await self.proc.stop()
            raise
        return self

    async def stop(self) -> None:
        """SIGTERM: the worker stops, writes its record file (if any) and exits."""
        await self.proc.stop()

    async def __aenter__(self) -> Worker:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class Cluster:
    """`ctx.replicas` `agenttasks serve --no-gateway` processes on one fresh database (the
    workload's SQLite file, or a PostgreSQL database of its own on `ctx.postgres`, dropped
    afterwards). The first sets the database up and makes the key and the agent; the others
    start on it once it has. An async context manager."""

    def __init__(self, ctx: Context, workdir: Path, name: str) -> None:
        if ctx.replicas > 1 and not ctx.on_postgres:
            raise ValueError("replicas share a PostgreSQL database: --replicas needs --db postgresql://")
        self.ctx = ctx
        self.workdir = workdir
        self.name = name
        self.servers: list[Server] = []
        self.db = ""
        self._stack = contextlib.AsyncExitStack()

    @property
    def first(self) -> Server:
        return self.servers[0]

    @property
    def agent_id(self) -> str:
        return self.first.agent_id

    def pids(self) -> dict[str, list[int]]:
        """{"server": pids of every replica}."""
        return {"server": [server.pid for server in self.servers]}

    def backend_cpu(self) -> BackendCpu | None:
        """A meter of the PostgreSQL backends serving this cluster's database (None on SQLite)."""
        if not is_postgres(self.db) or self.ctx.postgres is None:
            return None
        return BackendCpu(self.ctx.postgres, self.ctx.postgres.name_for(self.name))

    async def start(self) -> Cluster:
        try:
            self.db = await self._stack.enter_async_context(self.ctx.database(self.workdir, self.name))
            first = await self._stack.enter_async_context(Server(self.workdir, db=self.db, metrics=self.ctx.metrics))
            self.servers.append(first)
            replicas = [
                Server(
                    self.workdir,
                    db=self.db,
                    name=f"agenttasks-{i}",
                    key=first.key,
                    agent_id=first.agent_id,
                    metrics=self.ctx.metrics,
                )
                for i in range(1, self.ctx.replicas)
            ]
            for replica in replicas:
                self._stack.push_async_callback(replica.stop)
            await asyncio.gather(*(replica.start() for replica in replicas))
            self.servers += replicas
        except BaseException:
            await self.stop()
            raise
        return self

    @contextlib.asynccontextmanager
    async def workers(self, capacity: int, *, record: bool = False) -> AsyncIterator[list[Worker]]:
        """One SDK worker process connected to each replica; with `record`, worker i writes
        `workdir/worker-record-i.json` when it stops (at the end of the block)."""
        workers = [
            Worker(
                server,
                capacity=capacity,
                record=self.workdir / f"worker-record-{i}.json" if record else None,
                name=f"worker-{i}" if i else "worker",
            )
            for i, server in enumerate(self.servers)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                stack.push_async_callback(worker.stop)
            await asyncio.gather(*(worker.start() for worker in workers))
            yield workers

    async def stop(self) -> None:
        """Stop every replica (in reverse), then drop the database. Safe twice."""
        await self._stack.aclose()
        self.servers = []

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
