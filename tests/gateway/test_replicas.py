"""One front for many replicas: Envoy as `agenttasks gateway` runs it, in front of three real
replicas on one store.

Calls are spread round robin; the native gRPC front serves the project's own stubs, streams
included; a replica that drains leaves the rotation without a read failing, and rejoins when it
is back; with most replicas down the calls still reach the one left; with all down the answer is
the gateway's JSON 503. Replicas share a PostgreSQL database: a SQLite file has one server
(`SqliteStore.serve_alone`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.gateway import Gateway
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.gateway.replicas import DEADLINE, cluster_stats, front, replica, replicas, until, upstream
from tests.gateway.support import assert_error, http_client
from tests.support import Api, PostgresDatabases, api_for, error_info

pytestmark = pytest.mark.asyncio

MISSING = "01a22373-0000-7000-8000-000000000000"


@pytest.fixture
def db_path(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """The replicas' one database: PostgreSQL only, as several servers need."""
    with postgres_databases.database() as url:
        yield url


@pytest_asyncio.fixture
async def replica_set(db_path: Path) -> AsyncIterator[list[Service]]:
    async with replicas(db_path, 3) as services:
        yield services


@pytest_asyncio.fixture
async def gateway_front(replica_set: list[Service]) -> AsyncIterator[Gateway]:
    async with front(replica_set) as gateway:
        yield gateway


@pytest_asyncio.fixture
async def front_key(replica_set: list[Service]) -> str:
    """A client key of tenant "default", written through one replica, good on all of them."""
    return await create_api_key(replica_set[0].store, "default", Role.CLIENT)


@pytest_asyncio.fixture
async def rest_front(gateway_front: Gateway, front_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(gateway_front, {"x-api-key": front_key}) as client:
        yield client


@pytest_asyncio.fixture
async def grpc_front(gateway_front: Gateway, front_key: str) -> AsyncIterator[Api]:
    """The project's own stubs, on the gateway's native gRPC port."""
    api = api_for(gateway_front.grpc_front_address, front_key)
    yield api
    await api.channel.close()


def address_of(service: Service) -> str:
    return f"127.0.0.1:{service.port}"


async def requests_per_replica(gateway: Gateway) -> dict[str, int]:
    return {found.address: found.requests for found in await gateway.upstream_status()}


async def test_rest_calls_are_spread_over_every_replica(
    replica_set: list[Service], gateway_front: Gateway, rest_front: httpx.AsyncClient
) -> None:
    before = await requests_per_replica(gateway_front)
    answers: list[httpx.Response] = []
    for i in range(4):
        created = await rest_front.post("/agent/create", json={"name": f"agent-{i}"})
        agent = created.json()["agent_id"]
        submitted = await rest_front.post(f"/agent/request/{agent}", json={"message": "hi"})
        task = submitted.json()["task_id"]
        answers += [
            created,
            await rest_front.get(f"/agent/{agent}"),
            await rest_front.get("/agent/list"),
            submitted,
            await rest_front.get(f"/agent/{agent}/task/{task}"),
            await rest_front.get(f"/v1/agent/{agent}/tasks"),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 202, 200, 200] * 4, [a.text for a in answers]
    # Whichever replica wrote it, every replica reads it: they share the store.
    assert len(answers[-4].json()["agents"]) == 4
    assert answers[-2].json()["status"] == "queued"

    after = await gateway_front.upstream_status()
    took = {found.address: found.requests - before[found.address] for found in after}
    assert set(took) == {address_of(service) for service in replica_set}
    assert all(count > 0 for count in took.values()), took
    assert sum(took.values()) == len(answers), took  # one call each, none sent twice
    assert all(found.healthy for found in after), after
    for answer in answers:  # a client cannot tell which replica answered
        for service in replica_set:
            assert address_of(service) not in answer.text + str(answer.headers), answer.headers


async def test_the_grpc_front_serves_the_projects_stubs(
    replica_set: list[Service], gateway_front: Gateway, grpc_front: Api
) -> None:
    before = await requests_per_replica(gateway_front)
    api, metadata = grpc_front, grpc_front.metadata
    agent = await api.create_agent("via-the-front")
    got = await api.agents.GetAgent(apb.GetAgentRequest(agent_id=agent), metadata=metadata)
    assert got.agent.name == "via-the-front"
    listed = await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=metadata)
    assert [a.agent_id for a in listed.agents] == [agent]
    submitted = await api.submit(agent, "hello")
    status = await api.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id=agent, task_id=submitted.task_id), metadata=metadata
    )
    assert (status.task.status, status.task.message) == ("queued", "hello")
    cancelled = await api.tasks.Cancel(tpb.CancelRequest(agent_id=agent, task_id=submitted.task_id), metadata=metadata)
    assert cancelled.task.status == "cancelled"
    # A finished task's watch is its snapshot and end, from whichever replica reads the store.
    watched = api.tasks.WatchTask(
        tpb.WatchTaskRequest(agent_id=agent, task_id=submitted.task_id), metadata=metadata, timeout=DEADLINE
    )
    assert [(m.type, m.status) for m in [m async for m in watched]] == [("snapshot", "cancelled"), ("end", "cancelled")]
    # Errors pass through untouched, rich details included.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.tasks.GetStatus(tpb.GetStatusRequest(agent_id=agent, task_id=MISSING), metadata=metadata)
    assert error_info(raised.value)[:2] == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")

    after = await requests_per_replica(gateway_front)
    took = {address: count - before[address] for address, count in after.items()}
    assert all(count > 0 for count in took.values()), took
    assert sum(took.values()) == 8, took


async def test_a_watch_through_the_grpc_front_gets_live_events(
    replica_set: list[Service], gateway_front: Gateway, grpc_front: Api, front_key: str
) -> None:
    agent = await grpc_front.create_agent()
    task = (await grpc_front.submit(agent, "watch me")).task_id
    stream = grpc_front.tasks.WatchTask(
        tpb.WatchTaskRequest(agent_id=agent, task_id=task), metadata=grpc_front.metadata, timeout=DEADLINE
    )
    messages = aiter(stream)
    snapshot = await anext(messages)
    assert (snapshot.type, snapshot.status) == ("snapshot", "queued")

    # The stream is open on one replica; the cancel goes straight to that one, so what is tested
    # is the front's stream, not the replicas' news to each other (tests/replicas has those).
    async def open_on_one() -> bool:
        return sorted(found.open_calls for found in await gateway_front.upstream_status()) == [0, 0, 1]

    await until(open_on_one, "the watch open on exactly one replica")
    holder = next(found for found in await gateway_front.upstream_status() if found.open_calls == 1)
    service = next(service for service in replica_set if address_of(service) == holder.address)
    direct = api_for(service.address, front_key)
    try:
        await direct.tasks.Cancel(tpb.CancelRequest(agent_id=agent, task_id=task), metadata=direct.metadata)
    finally:
        await direct.channel.close()
    rest = [m async for m in messages]
    assert [(m.type, m.status) for m in rest] == [("status", "cancelled"), ("end", "cancelled")]
    assert rest[-1].reason == "TASK_FINISHED"


class Load:
    """Clients reading through both doors of the gateway until told to stop, keeping every
    failure: REST and gRPC GetStatus and GetAgent.

    Reads only: a write that reaches a replica in the instant it stops can be CANCELLED by the
    gRPC server (calls received but not yet started are cancelled by its stop), and the
    gateway does not send a cancelled write again, since a write cancelled later (its grace
    period over) may have committed. The replica's drain order is where that race is closed.
    """

    def __init__(self, rest: httpx.AsyncClient, api: Api, agent: str, task: str) -> None:
        self.rest, self.api, self.agent, self.task = rest, api, agent, task
        self.calls = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, clients: int = 2) -> None:
        for _ in range(clients):
            self._tasks.append(asyncio.create_task(self._rest()))
            self._tasks.append(asyncio.create_task(self._grpc()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def more(self, count: int) -> None:
        """Wait until `count` more calls were answered."""
        target = self.calls + count

        async def done() -> bool:
            return self.calls >= target or any(t.done() for t in self._tasks)

        await until(done, f"{count} more calls")

    async def _rest(self) -> None:
        while not self._stop.is_set():
            for path in [f"/agent/{self.agent}/task/{self.task}", f"/agent/{self.agent}"]:
                answer = await self.rest.get(path)
                self.calls += 1
                if answer.status_code != 200:
                    self.failures.append(f"GET {path}: {answer.status_code} {answer.text}")

    async def _grpc(self) -> None:
        api, metadata = self.api, self.api.metadata
        status = tpb.GetStatusRequest(agent_id=self.agent, task_id=self.task)
        while not self._stop.is_set():
            try:
                await api.tasks.GetStatus(status, metadata=metadata)
                self.calls += 1
                await api.agents.GetAgent(apb.GetAgentRequest(agent_id=self.agent), metadata=metadata)
                self.calls += 1
            except grpc.aio.AioRpcError as error:
                self.calls += 1
                self.failures.append(f"gRPC {error.code().name}: {error.details()}")


@pytest.mark.timeout(120)
async def test_a_draining_replica_leaves_the_rotation_and_no_read_fails(
    db_path: Path,
    replica_set: list[Service],
    gateway_front: Gateway,
    rest_front: httpx.AsyncClient,
    grpc_front: Api,
) -> None:
    agent = await grpc_front.create_agent()
    task = (await grpc_front.submit(agent)).task_id
    load = Load(rest_front, grpc_front, agent, task)
    load.start()
    try:
        await load.more(40)
        leaving = replica_set[0]
        port = leaving.port
        # What SIGTERM does: NOT_SERVING, new calls refused with SHUTTING_DOWN (before any work,
        # so the gateway sends them to another replica), calls in flight finish, port closed.
        # Calls that meet it on the way are sent on: they were refused, never connected, or
        # cancelled unstarted by the stopping server.
        await leaving.stop()

        async def out_of_rotation() -> bool:
            return not (await upstream(gateway_front, leaving)).healthy

        await until(out_of_rotation, "the stopped replica out of rotation")
        took = (await upstream(gateway_front, leaving)).requests
        await load.more(60)
        assert (await upstream(gateway_front, leaving)).requests == took  # nothing more was sent there

        # Restarted on its port (a rolling restart), it is back in rotation and gets calls again.
        async with replica(db_path, port) as restarted:

            async def back_in_rotation() -> bool:
                return (await upstream(gateway_front, restarted)).healthy

            await until(back_in_rotation, "the restarted replica back in rotation")

            async def gets_calls() -> bool:
                return (await upstream(gateway_front, restarted)).requests > took

            await until(gets_calls, "calls reaching the restarted replica")
            await load.stop()
    finally:
        await load.stop()
    assert load.failures == [], load.failures
    retries = await cluster_stats(gateway_front)
    # Whatever Envoy sent again (calls that met the drain) succeeded at the next replica.
    assert retries.get("upstream_rq_retry_limit_exceeded", 0) == 0, retries
    assert retries.get("upstream_rq_retry_overflow", 0) == 0, retries
    assert retries.get("upstream_rq_retry", 0) == retries.get("upstream_rq_retry_success", 0), retries


async def test_with_most_replicas_down_calls_reach_the_one_left(
    replica_set: list[Service], gateway_front: Gateway, rest_front: httpx.AsyncClient, grpc_front: Api
) -> None:
    agent = await grpc_front.create_agent()
    for service in replica_set[1:]:
        await service.stop()

    async def both_out() -> bool:
        return [found.healthy for found in await gateway_front.upstream_status()] == [True, False, False]

    await until(both_out, "two stopped replicas out of rotation")
    # Below half the replicas healthy, Envoy stops trusting its health checks (panic mode) and
    # spreads calls over all three again: two in three first meet a closed port, and are sent
    # on to a replica not tried yet, until the one that answers.
    answers = [await rest_front.get(f"/agent/{agent}") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    for _ in range(6):
        await grpc_front.agents.GetAgent(apb.GetAgentRequest(agent_id=agent), metadata=grpc_front.metadata)
    retries = await cluster_stats(gateway_front)
    assert retries["upstream_rq_retry"] > 0, retries
    assert retries.get("upstream_rq_retry_limit_exceeded", 0) == 0, retries


async def test_all_replicas_down_is_the_gateways_json_503(
    replica_set: list[Service], gateway_front: Gateway, rest_front: httpx.AsyncClient, grpc_front: Api
) -> None:
    assert (await rest_front.get("/agent/list")).status_code == 200
    for service in replica_set:
        await service.stop()
    response = await rest_front.get("/agent/list")
    body = assert_error(response, 503, "UPSTREAM_UNAVAILABLE", "UNAVAILABLE")
    assert body["message"].startswith("cannot reach the agenttasks server behind the gateway ("), body
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await grpc_front.agents.ListAgents(apb.ListAgentsRequest(), metadata=grpc_front.metadata)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
