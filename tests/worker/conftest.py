"""Fixtures for the worker SDK and exec runner tests, all against the real service.

`service` is the real gRPC service with leases short enough that a lost one is noticed in
seconds; `start_worker` runs SDK workers that never outlive their test; `tasks` is the client's
view of the test agent's tasks, with polling helpers (a deadline, never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import json_format

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import task_pb2
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.worker import Handler, Worker
from tests.support import Api, make_settings

LEASE_SECONDS = 3.0
SWEEP_SECONDS = 0.05
WAIT_SECONDS = 30.0
"""Deadline of every poll: generous, because a poll returns as soon as its condition holds."""
POLL_SECONDS = 0.02

REPO = Path(__file__).resolve().parents[2]
ASK_AGENT = REPO / "examples" / "ask_agent.py"
_SCRIPT = Path(sys.executable).parent / "agenttasks"
AGENTTASKS: tuple[str, ...] = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "agenttasks.cli.main")


async def eventually(condition: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


def process_gone(pid: int) -> bool:
    """Whether `pid` no longer runs. A zombie counts as gone: orphans are reaped by PID 1, which
    in some containers never does it, and a zombie runs nothing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without AGENTTASKS_* settings (the developer's shell must not
    leak in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTTASKS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Tasks:
    """The client's side of the test agent's tasks."""

    api: Api
    agent_id: str

    async def submit(self, message: str = "do it", **fields: Any) -> str:
        if isinstance(fields.get("metadata"), dict):
            fields["metadata"] = json_format.ParseDict(fields["metadata"], task_pb2.Task().metadata)
        return (await self.api.submit(self.agent_id, message, **fields)).task_id

    async def get(self, task_id: str) -> task_pb2.Task:
        request = tpb.GetStatusRequest(agent_id=self.agent_id, task_id=task_id)
        answer: tpb.GetStatusResponse = await self.api.tasks.GetStatus(request, metadata=self.api.metadata)
        return answer.task

    async def wait(self, task_id: str, *statuses: str) -> task_pb2.Task:
        """The task once its status is one of `statuses`."""
        last: list[task_pb2.Task] = []

        async def reached() -> task_pb2.Task | None:
            task = await self.get(task_id)
            last[:] = [task]
            return task if task.status in statuses else None

        deadline = time.monotonic() + WAIT_SECONDS
        while (task := await reached()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"task never reached {statuses}; last seen:\n{last[0] if last else None}")
            await asyncio.sleep(POLL_SECONDS)
        return task

    async def wait_for(self, task_id: str, what: str, check: Callable[[task_pb2.Task], bool]) -> task_pb2.Task:
        async def holds() -> task_pb2.Task | None:
            task = await self.get(task_id)
            return task if check(task) else None

        task: task_pb2.Task = await eventually(holds, what)
        return task

    async def send(self, task_id: str, text: str) -> None:
        request = tpb.SendMessageRequest(agent_id=self.agent_id, task_id=task_id, message=text)
        await self.api.tasks.SendMessage(request, metadata=self.api.metadata)

    async def cancel(self, task_id: str) -> None:
        request = tpb.CancelRequest(agent_id=self.agent_id, task_id=task_id)
        await self.api.tasks.Cancel(request, metadata=self.api.metadata)

    def watch(self, task_id: str, after_sequence: int = 0) -> AsyncIterator[tpb.WatchTaskResponse]:
        request = tpb.WatchTaskRequest(agent_id=self.agent_id, task_id=task_id, after_sequence=after_sequence)
        stream: AsyncIterator[tpb.WatchTaskResponse] = self.api.tasks.WatchTask(request, metadata=self.api.metadata)
        return stream


StartWorker = Callable[..., Awaitable[Worker]]
"""`await start_worker(handler, capacity=1, agent_id=None, api_key=None)`: a connected worker."""


@pytest_asyncio.fixture
async def service(db_path: Path) -> AsyncIterator[Service]:
    """The real service, with short leases and fast sweeps so lost leases show within seconds."""
    settings = make_settings(db_path, lease_seconds=LEASE_SECONDS, sweep_seconds=SWEEP_SECONDS)
    async with Service(settings) as svc:
        yield svc


@pytest_asyncio.fixture
async def worker_key(service: Service) -> str:
    return await create_api_key(service.store, "default", Role.WORKER)


@pytest_asyncio.fixture
async def tasks(client: Api, agent_id: str) -> Tasks:
    return Tasks(client, agent_id)


@pytest_asyncio.fixture
async def start_worker(service: Service, worker_key: str, agent_id: str) -> AsyncIterator[StartWorker]:
    async with AsyncExitStack() as stack:

        async def start(
            handler: Handler, capacity: int = 1, agent: str | None = None, api_key: str | None = None
        ) -> Worker:
            worker = Worker(
                server=service.address,
                api_key=api_key or worker_key,
                agent_id=agent or agent_id,
                handler=handler,
                capacity=capacity,
                name="test-worker",
            )
            await stack.enter_async_context(worker)
            async with asyncio.timeout(WAIT_SECONDS):
                await worker.wait_connected()
            return worker

        yield start
