"""Several servers on one PostgreSQL database act as one service (DESIGN section 6).

Three real gRPC servers (A, B, C) run on one fresh PostgreSQL database. Nothing polls for work:
without the news one server sends the others (NOTIFY, heard with LISTEN), a task submitted
through A would never reach a worker connected to B, nor would a cancel, an answer or a
timeout decided on A reach it. So every wait below is a deadline (the test fails if the news
never comes), never a timing assertion.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import psycopg
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role, utcnow
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import Api, PostgresDatabases, api_for, make_settings
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.asyncio

DEADLINE = 15.0
LEASE_SECONDS = 1.0

Servers = dict[str, Service]


@pytest_asyncio.fixture
async def url(postgres_databases: PostgresDatabases) -> AsyncIterator[str]:
    with postgres_databases.database() as made:
        yield made


@pytest_asyncio.fixture
async def servers(url: str) -> AsyncIterator[Servers]:
    """A, B and C on one database. Only A runs the sweeps often, so a timeout or a lost lease
    is decided on A, whoever holds the task."""
    started: Servers = {}
    try:
        for name, sweep in (("A", 0.05), ("B", 3600.0), ("C", 3600.0)):
            settings = make_settings(
                url, lease_seconds=LEASE_SECONDS, sweep_seconds=sweep, api_key_cache_seconds=3600.0
            )
            started[name] = await Service(settings).__aenter__()
        yield started
    finally:
        for service in started.values():
            await service.stop(grace=1)


@pytest_asyncio.fixture
async def apis(servers: Servers) -> AsyncIterator[Callable[[str, str], Api]]:
    opened: list[Api] = []

    def connect(server: str, key: str) -> Api:
        api = api_for(servers[server].address, key)
        opened.append(api)
        return api

    yield connect
    for api in opened:
        await api.channel.close()


@pytest_asyncio.fixture
async def client_key(servers: Servers) -> str:
    return await create_api_key(servers["A"].store, "default", Role.CLIENT)


@pytest_asyncio.fixture
async def agent_id(apis: Callable[[str, str], Api], client_key: str) -> str:
    return await apis("A", client_key).create_agent("replicated", input_timeout_seconds=3600)


@pytest_asyncio.fixture
async def workers(servers: Servers) -> AsyncIterator[Callable[..., Awaitable[RawWorker]]]:
    key = await create_api_key(servers["A"].store, "default", Role.WORKER)
    started: list[RawWorker] = []

    async def start(server: str, agent_id: str, capacity: int = 1) -> RawWorker:
        worker = RawWorker(servers[server].address, key, agent_id, capacity)
        started.append(worker)
        return await worker.start()

    yield start
    for worker in started:
        await worker.close()


T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, DEADLINE)


async def status_of(api: Api, task_id: str) -> tpb.Task:
    answer = await api.tasks.GetStatus(tpb.GetStatusRequest(agent_id="-", task_id=task_id), metadata=api.metadata)
    return answer.task


async def test_a_task_submitted_through_one_server_reaches_a_worker_on_another(
    apis: Callable[[str, str], Api], client_key: str, agent_id: str, workers: Callable[..., Awaitable[RawWorker]]
) -> None:
    worker = await workers("B", agent_id)
    task_id = (await apis("A", client_key).submit(agent_id, "cross")).task_id
    assignment = await within(worker.next_assignment())
    assert (assignment.task.task_id, assignment.task.message) == (task_id, "cross")


async def test_a_cancel_and_an_answer_on_one_server_reach_the_worker_on_another(
    apis: Callable[[str, str], Api], client_key: str, agent_id: str, workers: Callable[..., Awaitable[RawWorker]]
) -> None:
    a, c = apis("A", client_key), apis("C", client_key)
    worker = await workers("B", agent_id)
    task_id = (await c.submit(agent_id, "ask me")).task_id
    assignment = await within(worker.next_assignment())
    ack = await worker.send(request_input=wpb.RequestInput(task=ref(assignment), prompt="which one?"))
    assert ack.code == 0, ack

    await a.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="the blue one"), metadata=a.metadata
    )
    delivery = await within(worker.deliveries.get())
    assert (delivery.message.text, delivery.task_id, delivery.is_reply) == ("the blue one", task_id, True)

    await c.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=c.metadata)
    stop = await within(worker.cancels.get())
    assert (stop.task_id, stop.reason) == (task_id, "CANCELLED_BY_CLIENT")
    # Each message reached the worker once, though B heard of it from A and published it itself.
    await asyncio.sleep(0.2)
    assert worker.deliveries.empty()


async def test_a_timeout_decided_on_one_server_stops_the_worker_on_another(
    apis: Callable[[str, str], Api], client_key: str, agent_id: str, workers: Callable[..., Awaitable[RawWorker]]
) -> None:
    worker = await workers("C", agent_id)
    task_id = (await apis("B", client_key).submit(agent_id, "too slow", timeout_override=1)).task_id
    await within(worker.next_assignment())
    stop = await within(worker.cancels.get())  # only A sweeps: it decided, C's worker heard
    assert (stop.task_id, stop.reason) == (task_id, "TIMEOUT")
    assert (await status_of(apis("C", client_key), task_id)).status == "failed"


async def test_a_watch_on_one_server_sees_every_event_written_through_others_in_order(
    apis: Callable[[str, str], Api], client_key: str, agent_id: str, workers: Callable[..., Awaitable[RawWorker]]
) -> None:
    b = apis("B", client_key)
    worker = await workers("C", agent_id)
    task_id = (await apis("A", client_key).submit(agent_id, "stream")).task_id
    stream = b.tasks.WatchTask(tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=b.metadata)
    seen: list[tpb.WatchTaskResponse] = []

    async def read() -> None:
        async for message in stream:
            seen.append(message)

    reading = asyncio.create_task(read())
    assignment = await within(worker.next_assignment())

    async def snapshot_read() -> None:
        while not seen:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await within(snapshot_read())  # from here on every chunk must come as an event, not in the snapshot
    for i in range(200):
        ack = await worker.send(output=wpb.AppendOutput(task=ref(assignment), chunk=f"{i},"))
        assert ack.code == 0, ack
    ack = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="done"))
    assert ack.code == 0, ack
    await within(reading)

    assert seen[0].type == "snapshot" and seen[-1].type == "end"
    sequences = [m.sequence for m in seen[1:-1]]
    assert sequences == list(range(seen[0].sequence + 1, seen[0].sequence + 1 + len(sequences)))
    assert "".join(m.output for m in seen if m.type == "output") == "".join(f"{i}," for i in range(200))
    assert (seen[-2].type, seen[-2].status) == ("status", "completed")


async def test_an_api_key_revoked_through_one_server_stops_working_on_the_others(
    servers: Servers, apis: Callable[[str, str], Api], client_key: str, agent_id: str
) -> None:
    b = apis("B", client_key)
    await b.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=b.metadata)  # cached on B for an hour
    revoked = await servers["A"].store.write(
        lambda tx: [tx.revoke_api_key(k.key_id, utcnow()) for k in tx.list_api_keys("default") if k.role is Role.CLIENT]
    )
    assert revoked == [True]

    async def refused() -> grpc.StatusCode:
        while True:
            try:
                await b.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=b.metadata)
            except grpc.aio.AioRpcError as error:
                return error.code()
            await asyncio.sleep(0.02)

    assert await within(refused()) == grpc.StatusCode.UNAUTHENTICATED


async def test_thousands_of_tasks_claimed_by_workers_on_three_servers_go_to_one_worker_each(
    url: str,
    apis: Callable[[str, str], Api],
    client_key: str,
    agent_id: str,
    workers: Callable[..., Awaitable[RawWorker]],
) -> None:
    count = 1500
    racing = [await workers(server, agent_id, capacity=8) for server in ("A", "B", "C") for _ in range(2)]
    done: Counter[str] = Counter()
    acked: list[str] = []

    async def work(worker: RawWorker) -> None:
        while True:
            assignment = await worker.next_assignment()
            done[assignment.task.task_id] += 1
            ack = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text=worker.agent_id))
            if ack.code == 0:
                acked.append(assignment.task.task_id)

    working = [asyncio.create_task(work(w)) for w in racing]
    submitters = [apis(server, client_key) for server in ("A", "B", "C")]
    ids: list[str] = []
    for batch in range(count // 100):
        api = submitters[batch % 3]
        answer = await api.tasks.BatchSubmit(
            tpb.BatchSubmitRequest(
                agent_id=agent_id, requests=[tpb.SubmitRequest(agent_id=agent_id, message=str(i)) for i in range(100)]
            ),
            metadata=api.metadata,
        )
        ids.extend(r.task_id for r in answer.responses)

    async def all_done() -> None:
        # Until every completion is acknowledged (stored), not merely every task assigned: the
        # workers are stopped next, and a completion still on its way would be lost with them.
        while len(acked) < count:  # noqa: ASYNC110 - a deadline on a count the workers move
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(all_done(), 4 * DEADLINE)  # 1,500 round trips on a loaded machine
    finally:
        for task in working:
            task.cancel()
    assert set(done) == set(ids) and set(done.values()) == {1}
    with psycopg.connect(url) as conn:  # the store's own record: one start per task, no second attempt
        starts = conn.execute(
            "SELECT task_id, count(*) FROM task_events WHERE status = 'running' AND type = 'status' GROUP BY task_id"
        ).fetchall()
        attempts = conn.execute("SELECT max(attempt), count(*) FROM tasks WHERE status = 'completed'").fetchone()
    assert len(starts) == count and {n for _, n in starts} == {1}
    assert attempts == (1, count)
    assert all(sum(1 for _ in w.assignments._queue) == 0 for w in racing)  # type: ignore[attr-defined]


async def test_a_lost_lease_is_taken_back_once_though_every_server_sweeps(
    url: str,
    servers: Servers,
    apis: Callable[[str, str], Api],
    client_key: str,
    agent_id: str,
    workers: Callable[..., Awaitable[RawWorker]],
) -> None:
    for name in ("D", "E"):  # two more servers sweeping as often as A
        settings = make_settings(url, lease_seconds=LEASE_SECONDS, sweep_seconds=0.05)
        servers[name] = await Service(settings).__aenter__()
    worker = await workers("C", agent_id)
    task_id = (await apis("B", client_key).submit(agent_id, "zombie")).task_id
    await within(worker.next_assignment())
    worker.stop_heartbeats()
    spare = await workers("B", agent_id)
    again = await within(spare.next_assignment())  # A took the lease back; B's worker got it
    assert (again.task.task_id, again.task.attempt) == (task_id, 2)
    with psycopg.connect(url) as conn:
        lost = conn.execute(
            "SELECT count(*) FROM task_events WHERE task_id = %s AND data->>'reason' = 'LEASE_LOST'", (task_id,)
        ).fetchone()
    assert lost == (1,)


async def test_webhooks_are_sent_once_though_every_server_runs_the_outbox(
    url: str,
    servers: Servers,
    apis: Callable[[str, str], Api],
    client_key: str,
    agent_id: str,
) -> None:
    for name in ("A", "B", "C"):  # replicas share one configuration: these may not call 127.0.0.1
        await servers[name].stop(grace=1)
    for name in ("D", "E", "F"):  # three servers that all poll the outbox often
        settings = make_settings(url, webhook_allow="127.0.0.0/8", sweep_seconds=0.02)
        servers[name] = await Service(settings).__aenter__()
    async with Receiver() as receiver:
        submitters = [apis(name, client_key) for name in ("D", "E", "F")]
        ids = [
            (
                await submitters[i % 3].submit(
                    agent_id, f"hook {i}", callback_mode="webhook", webhook_url=receiver.url()
                )
            ).task_id
            for i in range(60)
        ]
        for i, task_id in enumerate(ids):  # each ends (cancelled) through another server
            api = submitters[(i + 1) % 3]
            await api.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)

        async def all_arrived() -> None:
            while len({r.headers["webhook-id"] for r in receiver.requests}) < len(ids):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await within(all_arrived())
        await asyncio.sleep(0.5)  # a second sending, if any, would have come by now
        sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(sent.values()) == {1}, sent.most_common(3)
    assert sorted(r.json()["data"]["task_id"] for r in receiver.requests) == sorted(ids)
