"""Three `agenttasks serve --no-gateway` processes on one PostgreSQL database, under load, while
one is killed with -9, and while each is restarted in turn behind `agenttasks gateway`.

Clients submit through one replica and watch through another; workers (the SDK) run in this
process. Every wait is a deadline: if what should happen never does, the test fails.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio

from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.store import open_store
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.worker import TaskContext, Worker
from tests.cli.support import LISTENING, Spawned, free_port
from tests.support import Api, PostgresDatabases, api_for

pytestmark = pytest.mark.asyncio

WAIT = 60.0
ENV = {
    "AGENTTASKS_LEASE_SECONDS": "2",
    "AGENTTASKS_SWEEP_SECONDS": "0.2",
    "AGENTTASKS_SHUTDOWN_GRACE_SECONDS": "3",
}
FRONT_LISTENING = re.compile(r"^agenttasks gRPC front listening on (\S+:\d+)$")


class Replica:
    """One `serve --no-gateway` on a port of its own, which a restart keeps."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = free_port()
        self.process: Spawned | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = Spawned("serve", "--db", self.url, "--grpc-port", str(self.port), "--no-gateway", env=ENV)
        self.process.wait_for_stdout(LISTENING)

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


@pytest.fixture
def replicas(postgres_databases: PostgresDatabases) -> Iterator[list[Replica]]:
    with postgres_databases.database() as url:
        made = [Replica(url) for _ in range(3)]
        try:
            for replica in made:
                replica.start()
            yield made
        finally:
            for replica in made:
                replica.kill()


@pytest_asyncio.fixture
async def keys(replicas: list[Replica]) -> dict[Role, str]:
    store = await open_store(replicas[0].url, create=False)
    try:
        return {role: await create_api_key(store, "default", role) for role in (Role.CLIENT, Role.WORKER)}
    finally:
        await store.close()


@dataclass
class Watched:
    """What one resuming watcher saw of a task: event sequences, output, how it ended."""

    sequences: list[int] = field(default_factory=list)
    output: str = ""
    status: str = ""
    resumes: int = 0


async def watch_to_the_end(addresses: list[str], key: str, agent_id: str, task_id: str) -> Watched:
    """Watch until the task ends; when the stream breaks or the server drains, resume on the
    next address after the last sequence seen, as a client of a replicated service does."""
    seen = Watched()
    last = 0
    turn = 0
    while True:
        api = api_for(addresses[turn % len(addresses)], key)
        try:
            request = tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=last)
            async for message in api.tasks.WatchTask(request, metadata=api.metadata):
                if message.type == "snapshot":
                    last = last or message.sequence
                    seen.status = message.status
                    continue
                if message.type == "end":
                    if message.reason == "TASK_FINISHED":
                        return seen
                    break  # SERVER_SHUTDOWN: resume elsewhere
                assert message.sequence == last + 1, (task_id, last, message.sequence)
                last = message.sequence
                seen.sequences.append(last)
                seen.status = message.status
                seen.output += message.output if message.type == "output" else ""
        except grpc.aio.AioRpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
        finally:
            await api.channel.close()
        seen.resumes += 1
        turn += 1
        await asyncio.sleep(0.1)


async def handle(ctx: TaskContext) -> str:
    await ctx.output("first half,")
    await ctx.flush()
    await asyncio.sleep(0.5)
    await ctx.output("second half")
    return "done"


@pytest_asyncio.fixture
async def apis() -> AsyncIterator[list[Api]]:
    opened: list[Api] = []
    yield opened
    for api in opened:
        await api.channel.close()


async def status_of(api: Api, task_id: str) -> tpb.Task:
    answer = await api.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id="-", task_id=task_id), metadata=api.metadata, timeout=10
    )
    return answer.task


async def test_a_replica_killed_mid_flight_loses_no_task_and_its_workers_and_watchers_move_on(
    replicas: list[Replica], keys: dict[Role, str], apis: list[Api]
) -> None:
    a, b, c = replicas
    submit = api_for(a.address, keys[Role.CLIENT])
    apis.append(submit)
    agent_id = await submit.create_agent("survives a crash")
    # Workers on C and on B; each falls over to the other (gRPC tries the addresses in order).
    on_c = Worker(f"ipv4:{c.address},{b.address}", keys[Role.WORKER], agent_id, handle, capacity=10, freeze_gc=False)
    on_b = Worker(f"ipv4:{b.address},{c.address}", keys[Role.WORKER], agent_id, handle, capacity=4, freeze_gc=False)
    async with on_c, on_b:
        await asyncio.wait_for(asyncio.gather(on_c.wait_connected(), on_b.wait_connected()), WAIT)
        first_id = on_c.worker_id
        task_ids = [(await submit.submit(agent_id, f"job {i}")).task_id for i in range(40)]
        # Watch half through C (those streams break) and half through B; resume on B or A.
        watchers = [
            asyncio.create_task(
                watch_to_the_end(
                    [c.address, b.address, a.address] if i % 2 else [b.address, a.address],
                    keys[Role.CLIENT],
                    agent_id,
                    task_id,
                )
            )
            for i, task_id in enumerate(task_ids)
        ]
        await asyncio.sleep(0.3)  # C's worker is mid-way through its first tasks
        c.kill()  # SIGKILL: no drain, no goodbye
        seen = await asyncio.wait_for(asyncio.gather(*watchers), WAIT)
        assert on_c.worker_id != first_id  # it reconnected, to B
        tasks = [await status_of(submit, task_id) for task_id in task_ids]

    assert [t.status for t in tasks] == ["completed"] * len(task_ids)
    assert {t.output for t in tasks} == {"first half,second half"}
    assert max(t.attempt for t in tasks) == 2, "C's worker held tasks when it died: they ran again"
    for watched in seen:
        assert watched.status == "completed"
        assert watched.sequences == sorted(set(watched.sequences))  # none twice
    assert any(w.resumes for w in seen), "the watchers on C had to resume elsewhere"


async def test_a_rolling_restart_behind_the_gateway_fails_no_client_call(
    replicas: list[Replica], keys: dict[Role, str], apis: list[Api]
) -> None:
    http_port = free_port()
    front = Spawned(
        "gateway",
        "--upstream",
        ",".join(r.address for r in replicas),
        "--http-port",
        str(http_port),
        "--grpc-front-port",
        "0",
        env=ENV,
    )
    try:
        address = front.wait_for_stdout(FRONT_LISTENING).group(1)
        client = api_for(address, keys[Role.CLIENT])
        apis.append(client)
        agent_id = await client.create_agent("survives a rolling restart")
        worker = Worker(address, keys[Role.WORKER], agent_id, handle, capacity=16, freeze_gc=False)
        outcomes: Counter[str] = Counter()
        accepted: list[str] = []
        watchers: list[asyncio.Task[Watched]] = []
        stop = asyncio.Event()

        async def call(make: object) -> object:
            """One client call, retried on UNAVAILABLE (counted), any other error counted as failed."""
            while True:
                try:
                    return await make()  # type: ignore[operator]
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        outcomes[f"failed {error.code().name}: {error.details()}"] += 1
                        return None
                    outcomes["retried on UNAVAILABLE"] += 1
                    await asyncio.sleep(0.1)

        async def load() -> None:
            while not stop.is_set():
                answer = await call(
                    lambda: client.tasks.Submit(
                        tpb.SubmitRequest(agent_id=agent_id, message="roll"), metadata=client.metadata, timeout=10
                    )
                )
                if isinstance(answer, tpb.SubmitResponse):
                    outcomes["ok"] += 1
                    accepted.append(answer.task_id)
                    if len(accepted) % 5 == 0:
                        watchers.append(
                            asyncio.create_task(
                                watch_to_the_end([address], keys[Role.CLIENT], agent_id, answer.task_id)
                            )
                        )
                    await call(lambda task_id=answer.task_id: status_of(client, task_id))
                await asyncio.sleep(0.02)

        async with worker:
            await asyncio.wait_for(worker.wait_connected(), WAIT)
            loading = asyncio.create_task(load())
            await asyncio.sleep(1.0)
            for replica in replicas:
                assert await asyncio.to_thread(replica.stop) == 0  # SIGTERM: drains
                await asyncio.to_thread(replica.start)
                await asyncio.sleep(2.5)  # the gateway's health checks see it back
            stop.set()
            await loading
            seen = await asyncio.wait_for(asyncio.gather(*watchers), WAIT)

            async def all_done() -> list[str]:
                while True:
                    states = [(await status_of(client, t)).status for t in accepted]
                    if set(states) == {"completed"}:
                        return states
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(all_done(), WAIT)
    finally:
        front.stop()
        front.kill()

    failed = {what: n for what, n in outcomes.items() if what.startswith("failed")}
    assert not failed, outcomes
    assert outcomes["ok"] > 20
    assert {w.status for w in seen} == {"completed"}
