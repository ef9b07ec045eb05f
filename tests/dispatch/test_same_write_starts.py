"""Tasks started in the write that frees or brings them: a Submit to a worker with a free
place, and a report that ends a task taking the next one. Each saves a transaction, and the
worker hears a commit sooner; neither may break the queue's order or a worker's capacity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agenttasks.app import Service
from agenttasks.core import lifecycle
from agenttasks.core.dispatch import Assign, TaskRef, complete_change
from agenttasks.core.ids import new_id
from agenttasks.core.model import Principal, Role, Task, TaskStatus, utcnow
from agenttasks.core.ports import Rerunnable, WriteTx
from agenttasks.core.tasks import SubmitInput
from agenttasks.store.postgres_store import PostgresStore
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.dispatch.test_dispatch import complete, status
from tests.store.test_sqlite_specific import commit_thread_held, turns
from tests.support import Api

pytestmark = pytest.mark.asyncio

StartWorker = Callable[..., Awaitable[RawWorker]]


async def settled_writes(service: Service) -> int:
    """The writer's count once nothing has been written for a while (a connect's round)."""
    last = service.store.stats().writes
    for _ in range(100):
        await asyncio.sleep(0.2)
        if (count := service.store.stats().writes) == last:
            return count
        last = count
    raise AssertionError("the store kept writing with nothing to do")


async def test_a_submit_to_an_idle_worker_starts_in_its_own_write(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    worker = await workers(agent_id, capacity=2, heartbeat=False)
    before = await settled_writes(service)
    answer = await client.submit(agent_id, "hello")
    assert answer.status == "queued"  # the contract's answer: accepted
    task = (await status(client, answer.task_id)).task
    assert (task.status, task.attempt) == ("running", 1)  # already started when Submit answered
    assignment = await worker.next_assignment()
    assert assignment.task.task_id == answer.task_id
    assert service.store.stats().writes - before == 1  # no second write to claim it
    await complete(worker, assignment)


async def test_a_submit_never_starts_ahead_of_queued_work_of_its_priority(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    worker = await workers(agent_id, capacity=5)
    await settled_writes(service)
    now = utcnow()
    waiting, _ = lifecycle.created(
        Task(tenant="default", task_id=new_id(), agent_id=agent_id, message="queued", created_at=now, updated_at=now)
    )

    def queued_unseen(tx: WriteTx) -> None:
        # As another replica's lease expiry would: queued in the store, never published here.
        tx.insert_task(waiting)

    await service.store.write(queued_unseen)
    same = (await client.submit(agent_id, "same priority", priority=5)).task_id
    order = [(await worker.next_assignment()).task.task_id for _ in range(2)]
    assert order == [waiting.task_id, same]  # FIFO within the priority, as a round hands them out
    higher = (await client.submit(agent_id, "higher", priority=9)).task_id
    assert (await status(client, higher)).task.status == "running"  # nothing of its priority waits
    assert (await worker.next_assignment()).task.task_id == higher


async def test_a_batch_gives_free_places_to_its_highest_priorities_and_queues_the_rest(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    worker = await workers(agent_id, capacity=2, heartbeat=False)
    before = await settled_writes(service)
    priorities = [5, 9, 1, 9, 5]
    request = tpb.BatchSubmitRequest(
        agent_id=agent_id,
        requests=[tpb.SubmitRequest(message=f"job {i}", priority=p) for i, p in enumerate(priorities)],
    )
    ids = [a.task_id for a in (await client.tasks.BatchSubmit(request, metadata=client.metadata)).responses]
    assert service.store.stats().writes - before == 1  # queued and started in one write
    statuses = [(await status(client, i)).task.status for i in ids]
    assert statuses == ["queued", "running", "queued", "running", "queued"]  # the two 9s, whatever the order
    first, second = [await worker.next_assignment() for _ in range(2)]
    assert [first.task.task_id, second.task.task_id] == [ids[1], ids[3]]
    await complete(worker, first)
    assert (await worker.next_assignment()).task.task_id == ids[0]  # then the 5s, in request order
    await complete(worker, second)
    assert (await worker.next_assignment()).task.task_id == ids[4]
    await asyncio.sleep(0.3)  # a chance for a (wrong) assignment beyond capacity 2
    assert worker.assignments.empty()
    assert (await status(client, ids[2])).task.status == "queued"  # the 1 waits for a place


async def test_an_ended_task_hands_its_place_to_the_next_in_the_same_write(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    ids = [(await client.submit(agent_id, f"job {i}", priority=p)).task_id for i, p in enumerate([5, 9, 5])]
    worker = await workers(agent_id, capacity=1, heartbeat=False)
    first = await worker.next_assignment()
    assert first.task.task_id == ids[1]  # the highest priority first
    before = await settled_writes(service)
    await complete(worker, first)
    second = await worker.next_assignment()
    assert second.task.task_id == ids[0]
    assert service.store.stats().writes - before == 1  # the completion's own write took it
    ack = await worker.send(fail=wpb.FailTask(task=ref(second), code="BROKEN", message="no"))
    assert ack.code == 0
    assert (await worker.next_assignment()).task.task_id == ids[2]  # a failure frees the place too
    await asyncio.sleep(0.3)  # a chance for a (wrong) extra assignment beyond capacity 1
    assert worker.assignments.empty()
    assert [(await status(client, i)).task.status for i in ids] == ["failed", "completed", "running"]


async def test_a_start_whose_write_fails_gives_the_place_back(service: Service, agent_id: str) -> None:
    dispatcher = service.dispatcher
    principal = Principal(tenant="default", role=Role.WORKER, subject="test")
    session = await dispatcher.connect(principal, agent_id, capacity=1)
    try:
        now = utcnow()
        task, _ = lifecycle.created(
            Task(tenant="default", task_id=new_id(), agent_id=agent_id, message="x", created_at=now, updated_at=now)
        )
        claim = dispatcher.claim()

        def start_then_fail(tx: WriteTx) -> None:
            assert dispatcher.start_new(tx, claim, task, now) is not None
            assert session.free == 0  # taken at once: no other write of the batch can have it
            raise RuntimeError("the rest of the write failed")

        with pytest.raises(RuntimeError, match="the rest of the write failed"):
            await claim.write(service.store, start_then_fail)
        assert session.free == 1
        assert session.outbox.empty()  # nothing was assigned
        assert await service.store.read(lambda tx: tx.get_task("default", task.task_id)) is None
    finally:
        await dispatcher.disconnect(session)


async def test_concurrent_submits_and_completions_never_exceed_capacity(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    worker = await workers(agent_id, capacity=3)
    total = 60
    submits = asyncio.gather(*(client.submit(agent_id, f"job {i}") for i in range(total)))
    held: dict[str, wpb.Assignment] = {}
    most = 0
    finished = 0
    while finished < total:
        while not worker.assignments.empty() or not held:
            assignment = await asyncio.wait_for(worker.assignments.get(), 20)
            held[assignment.task.task_id] = assignment
        most = max(most, len(held))
        assert len(held) <= 3, sorted(held)
        task_id = next(iter(held))
        await complete(worker, held.pop(task_id))
        finished += 1
    answers = await submits
    assert most == 3
    assert worker.assignments.empty()
    assert {(await status(client, a.task_id)).task.status for a in answers} == {"completed"}


async def test_a_start_is_not_undone_by_the_earlier_news_of_its_task(service: Service, agent_id: str) -> None:
    """A report that ends A takes Q, which a Submit queued just before (the worker was full):
    the Submit's publish of Q as queued comes after the start was decided but before it
    committed, and must not read as 'someone else requeued it' (a Stop before the Assign)."""
    dispatcher, tasks = service.dispatcher, service.tasks
    owner = Principal(tenant="default", role=Role.CLIENT, subject="test")
    session = await dispatcher.connect(Principal(tenant="default", role=Role.WORKER, subject="w"), agent_id, 1)
    try:
        first = await tasks.submit(owner, agent_id, SubmitInput("A"))
        assigned = session.outbox.get_nowait()
        assert isinstance(assigned, Assign) and assigned.task.task_id == first.task_id
        async with commit_thread_held(service.store):  # both writes wait for the same commit
            queued = asyncio.ensure_future(tasks.submit(owner, agent_id, SubmitInput("Q")))
            await turns(5)
            ended = asyncio.ensure_future(
                dispatcher.report_one(session, TaskRef(first.task_id, 1), complete_change("done", None))
            )
            await turns(5)
        q = (await queued).task_id
        await ended
        await turns(5)
        pushed = [session.outbox.get_nowait() for _ in range(session.outbox.qsize())]
        assert [(type(p).__name__, p.task.task_id if isinstance(p, Assign) else p) for p in pushed] == [("Assign", q)]
        assert session.held == {q: 1}
        stored = await service.store.read(lambda tx: tx.get_task("default", q))
        assert stored is not None and (stored.status, stored.worker_id) == (TaskStatus.RUNNING, session.worker_id)
    finally:
        await dispatcher.disconnect(session)


async def test_a_submit_run_again_after_a_rollback_starts_its_task_once(service: Service, agent_id: str) -> None:
    """A Submit's write is Rerunnable: on PostgreSQL, when a write beside it in its batch fails,
    the run is rolled back and run again, settled. The worker place the Submit's first run took
    is given back (Claim.rewind): the worker is sent the task once and keeps its other place.
    (On SQLite the write runs once; the same holds.)"""
    dispatcher, tasks = service.dispatcher, service.tasks
    owner = Principal(tenant="default", role=Role.CLIENT, subject="test")
    session = await dispatcher.connect(Principal(tenant="default", role=Role.WORKER, subject="w"), agent_id, 2)
    now = utcnow()
    ghost = Task(tenant="default", task_id=new_id(), agent_id=agent_id, message="never", created_at=now, updated_at=now)
    before = service.store.stats()
    try:
        async with commit_thread_held(service.store):  # both writes in one batch
            failing = asyncio.ensure_future(service.store.write(Rerunnable(lambda tx: tx.update_task(ghost))))
            await turns(5)
            submitted = asyncio.ensure_future(tasks.submit(owner, agent_id, SubmitInput("once")))
            await turns(5)
        with pytest.raises(LookupError):
            await failing
        task_id = (await submitted).task_id
        await turns(5)
        pushed = [session.outbox.get_nowait() for _ in range(session.outbox.qsize())]
        assert [(type(p).__name__, p.task.task_id if isinstance(p, Assign) else p) for p in pushed] == [
            ("Assign", task_id)
        ]
        assert session.held == {task_id: 1} and session.free == 1
        if isinstance(service.store, PostgresStore):
            assert service.store.stats().reruns > before.reruns  # it did run twice
    finally:
        await dispatcher.disconnect(session)
