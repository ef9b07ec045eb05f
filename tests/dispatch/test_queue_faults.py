"""Total-queue accounting under faults, in the manner of Jepsen's queue tests (short mode).

A backlog of tasks is worked by several SDK workers while a fault loop kills workers without a
goodbye, freezes one past its lease (a raw worker that stops heartbeating and answers too
late), and restarts the server. Afterwards: lost = 0 (every task completed), unexpected = 0 (no
completion of a task nobody submitted), no task completed twice, and every task that ran more
than once shows why in its own events: each extra run follows a LEASE_LOST requeue.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from pathlib import Path

import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import EventType, Role
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from agenttasks.worker import TaskContext, Worker
from tests.dispatch.raw_worker import RawWorker, reason_of, ref
from tests.long_runs import report, short_or_long, time_limit
from tests.support import api_for, make_settings

pytestmark = [pytest.mark.asyncio, time_limit(60)]

TASKS = short_or_long(1500, 20_000)
# Rounds of the fault loop (kill, stall, kill, restart, kill), one after another over the backlog.
FAULT_ROUNDS = short_or_long(1, 15)
WAIT = short_or_long(120, 1200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_no_task_is_lost_or_completed_twice_through_worker_kills_a_stall_and_a_restart(
    db_path: Path,
) -> None:
    rng = random.Random(11)
    settings = make_settings(db_path, grpc_port=free_port(), lease_seconds=1.0, sweep_seconds=0.05)
    service = await Service(settings).__aenter__()
    address = service.address
    runs: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    try:
        admin_key = await create_api_key(service.store, "default", Role.ADMIN)
        admin = api_for(address, admin_key)
        worker_key = await create_api_key(service.store, "default", Role.WORKER)
        agent_id = await admin.create_agent("faulty", max_attempts=100)
        ids: set[str] = set()
        for start in range(0, TASKS, 500):
            answer = await admin.tasks.BatchSubmit(
                tpb.BatchSubmitRequest(
                    agent_id=agent_id,
                    requests=[tpb.SubmitRequest(agent_id=agent_id, message=str(i)) for i in range(start, start + 500)],
                ),
                metadata=admin.metadata,
            )
            ids |= {r.task_id for r in answer.responses}

        async def handle(ctx: TaskContext) -> str:
            runs[ctx.task_id] += 1
            await asyncio.sleep(rng.random() * 0.04)
            return "done"

        def make_worker() -> Worker:
            return Worker(address, worker_key, agent_id, handle, capacity=4, max_backoff=0.5, freeze_gc=False)

        running: list[asyncio.Task[None]] = [asyncio.create_task(make_worker().run()) for _ in range(3)]

        async def kill_one() -> None:  # no goodbye: the stream just breaks
            victim = running.pop(rng.randrange(len(running)))
            victim.cancel()
            running.append(asyncio.create_task(make_worker().run()))

        async def stall_one() -> None:  # takes tasks, goes silent past the lease, answers late
            staller = await RawWorker(address, worker_key, agent_id, capacity=4, heartbeat=False).start()
            taken = [await staller.next_assignment() for _ in range(2)]
            for assignment in taken:
                runs[assignment.task.task_id] += 1
            await asyncio.sleep(2.5)  # > lease: the server takes them back
            for assignment in taken:
                ack = await staller.send(complete=wpb.CompleteTask(task=ref(assignment), text="late"))
                assert reason_of(ack) == "LEASE_LOST"
            await staller.vanish()

        async def count_done() -> int:
            left = await service.store.read(lambda tx: tx.unfinished_tasks("default", agent_id, None))
            return len(ids) - len(left)

        for _ in range(FAULT_ROUNDS):
            await asyncio.sleep(0.3)
            await kill_one()
            await stall_one()
            await kill_one()
            # The server restarts on the same port and store; the workers reconnect by themselves.
            await admin.channel.close()
            await service.stop(grace=1)
            service = await Service(settings).__aenter__()
            admin = api_for(address, admin_key)
            await kill_one()

        async def all_done() -> None:
            while await count_done() < len(ids):  # noqa: ASYNC110 - a deadline on the workers' progress
                await asyncio.sleep(0.1)

        await asyncio.wait_for(all_done(), WAIT)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

        tasks = {}
        events = {}
        for task_id in ids:
            tasks[task_id] = await service.store.read(lambda tx, t=task_id: tx.get_task("default", t))
            events[task_id] = await service.store.read(lambda tx, t=task_id: tx.events_after("default", t, 0, 10_000))
        await admin.channel.close()
    finally:
        await service.stop(grace=1)

    lost = [t for t in ids if tasks[t] is None or tasks[t].status.value != "completed"]
    assert lost == []
    requeued = 0
    for task_id in ids:
        finished = [e for e in events[task_id] if e.type is EventType.STATUS and e.status.value == "completed"]
        completed[task_id] = len(finished)
        requeues = [e for e in events[task_id] if e.data.get("reason") == "LEASE_LOST"]
        requeued += len(requeues)
        starts = [e for e in events[task_id] if e.type is EventType.STATUS and e.status.value == "running"]
        # Each run after the first follows a lease taken back (a worker killed, frozen, or cut off
        # by the restart): one start per attempt, one LEASE_LOST requeue between two attempts.
        assert len(starts) == tasks[task_id].attempt == len(requeues) + 1, (task_id, len(starts), len(requeues))
        assert runs[task_id] <= len(starts), (task_id, runs[task_id], len(starts))
    assert set(completed.values()) == {1}  # none completed twice
    assert set(runs) <= ids  # nothing ran that nobody submitted
    assert sum(1 for n in runs.values() if n > 1) > 0, "the faults made some tasks run again"
    report(
        "queue_faults",
        store="sqlite" if isinstance(db_path, Path) else "postgresql",
        tasks=len(ids),
        fault_rounds=FAULT_ROUNDS,
        lost=len(lost),
        unexpected=len(set(runs) - ids),
        completed_twice=sum(1 for n in completed.values() if n > 1),
        ran_again=sum(1 for n in runs.values() if n > 1),
        lease_lost_requeues=requeued,
    )
