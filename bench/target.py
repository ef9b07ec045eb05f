"""The system under test: `agenttasks serve`, exactly as a user runs it, on a fresh database.

`Server` starts the real command (gRPC on a free port, and the REST gateway through the real
Envoy when asked), reads the admin key it prints on first start, and creates an agent to submit
to. `Worker` runs `python -m bench.worker` (the Python SDK's `Worker`) as a process of its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import agent_service_pb2_grpc, task_service_pb2_grpc
from bench import loadgen
from bench.procs import Proc, children

STARTUP_SECONDS = 60.0


def serve_command(db: Path, gateway: bool) -> list[str]:
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
    """`agenttasks serve` on `workdir/agenttasks.db`. An async context manager."""

    def __init__(self, workdir: Path, *, gateway: bool = False, name: str = "agenttasks") -> None:
        self.workdir = workdir
        self.gateway = gateway
        # A clean environment: no AGENTTASKS_* of the person running the bench leaks in.
        self.proc = Proc(name, serve_command(workdir / "agenttasks.db", gateway), workdir, cwd=workdir)
        self.address = ""
        self.rest_url = ""
        self.key = ""
        self.agent_id = ""
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
        await self.proc.start()
        try:
            self.address = (await self.proc.wait_for_line(r"gRPC listening on (\S+)", STARTUP_SECONDS)).group(1)
            self.key = (await self.proc.wait_for_line(r"^admin api key: (\S+)", STARTUP_SECONDS)).group(1)
            if self.gateway:
                self.rest_url = (await self.proc.wait_for_line(r"REST listening on (\S+)", STARTUP_SECONDS)).group(1)
            self.agent_id = await self.create_agent("bench")
        except BaseException:
            await self.stop()
            raise
        return self

    def api(self) -> Api:
        """Stubs on a new channel (closed by `stop`)."""
        channel = loadgen.channel(self.address)
        api = Api(
            channel,
            task_service_pb2_grpc.TaskServiceStub(channel),
            agent_service_pb2_grpc.AgentServiceStub(channel),
            (("authorization", f"Bearer {self.key}"),),
        )
        self._apis.append(api)
        return api

    async def create_agent(self, name: str) -> str:
        api = self.api()
        answer = await api.agents.CreateAgent(apb.CreateAgentRequest(name=name), metadata=api.metadata, timeout=30)
        return str(answer.agent.agent_id)

    async def stop(self) -> None:
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
