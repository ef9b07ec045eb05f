"""PostgreSQL goes away under load and comes back: three replicas fail fast, say so, and recover.

The replicas reach PostgreSQL through a proxy the test takes away (every connection breaks, new
ones are refused) and brings back, which is what a PostgreSQL restart looks like to them. Every
call has a deadline: one that hangs fails the test as DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.worker import TaskContext, Worker
from tests.replicas.proxy import PostgresProxy
from tests.support import Api, PostgresDatabases, api_for, error_info, make_settings

pytestmark = pytest.mark.asyncio

CALL_DEADLINE = 15.0
WAIT = 30.0


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[PostgresProxy]:
    made = PostgresProxy()
    await made.start()
    yield made
    await made.stop()


@pytest_asyncio.fixture
async def servers(postgres_databases: PostgresDatabases, proxy: PostgresProxy) -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    with postgres_databases.database() as url:
        try:
            for _ in range(3):
                settings = make_settings(proxy.url(url), lease_seconds=2.0, sweep_seconds=0.1)
                started.append(await Service(settings).__aenter__())
            yield started
        finally:
            for service in started:
                await service.stop(grace=1)


async def health(service: Service) -> int:
    async with grpc.aio.insecure_channel(service.address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(answer.status)


async def until_health(servers: list[Service], wanted: int) -> None:
    async def all_there() -> None:
        while [await health(s) for s in servers] != [wanted] * len(servers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await asyncio.wait_for(all_there(), WAIT)


async def test_calls_fail_fast_with_unavailable_health_says_so_and_every_replica_recovers(
    servers: list[Service], proxy: PostgresProxy
) -> None:
    store = servers[0].store
    client_key = await create_api_key(store, "default", Role.CLIENT)
    worker_key = await create_api_key(store, "default", Role.WORKER)
    apis: list[Api] = [api_for(s.address, client_key) for s in servers[:2]]
    agent_id = await apis[0].create_agent("through an outage")
    done: Counter[str] = Counter()

    async def handle(ctx: TaskContext) -> str:
        done[ctx.task_id] += 1
        return "ok"

    outcomes: Counter[str] = Counter()
    accepted: list[str] = []
    stop = asyncio.Event()

    async def load(api: Api) -> None:
        while not stop.is_set():
            try:
                answer = await api.tasks.Submit(
                    tpb.SubmitRequest(agent_id=agent_id, message="x"), metadata=api.metadata, timeout=CALL_DEADLINE
                )
                accepted.append(answer.task_id)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                code, reason, _ = (
                    error_info(error)
                    if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                    else (
                        error.code(),
                        "",
                        [],
                    )
                )
                outcomes[f"{code.name} {reason}"] += 1
                await asyncio.sleep(0.05)

    worker = Worker(servers[2].address, worker_key, agent_id, handle, capacity=8, freeze_gc=False)
    async with worker:
        await asyncio.wait_for(worker.wait_connected(), WAIT)
        loaders = [asyncio.create_task(load(api)) for api in apis]
        try:
            await asyncio.sleep(1.0)
            before = outcomes["OK"]
            async with proxy.outage():
                await until_health(servers, health_pb2.HealthCheckResponse.NOT_SERVING)
                refused = sum(n for what, n in outcomes.items() if what.startswith("UNAVAILABLE"))

                async def refusals_seen() -> None:
                    while sum(n for w, n in outcomes.items() if w.startswith("UNAVAILABLE")) < refused + 20:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(refusals_seen(), WAIT)  # still answering, and fast
            await until_health(servers, health_pb2.HealthCheckResponse.SERVING)

            async def accepting_again() -> None:
                mark = outcomes["OK"]
                while outcomes["OK"] < mark + 50:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(accepting_again(), WAIT)
        finally:
            stop.set()
            await asyncio.gather(*loaders)

        async def all_done() -> None:
            while not set(accepted) <= set(done):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_done(), WAIT)  # every acknowledged task ran, after all
    for api in apis:
        await api.channel.close()

    assert before > 0
    assert set(outcomes) <= {"OK", "UNAVAILABLE STORE_UNAVAILABLE"}, outcomes
    assert outcomes["UNAVAILABLE STORE_UNAVAILABLE"] >= 20
