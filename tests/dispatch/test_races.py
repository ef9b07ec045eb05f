"""Cancel raced against a worker's report on the same task, hundreds of times over, on each store.

Whatever wins, a task ends in exactly one terminal state that never changes afterwards: its
events hold one terminal status event, GetStatus agrees with it, the loser is refused cleanly
(TASK_ALREADY_FINISHED for the client, LEASE_LOST for the worker), and a webhook task that
ended cancelled never reports `task.completed` to its receiver.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.core.model import TaskStatus
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.conftest import LEASE_SECONDS, SWEEP_SECONDS
from tests.dispatch.raw_worker import RawWorker, reason_of, ref
from tests.support import Api, error_info, make_settings
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def service(db_path: Path) -> AsyncIterator[Service]:
    """The dispatch tests' service, allowed to call a webhook receiver on this machine."""
    settings = make_settings(
        db_path, lease_seconds=LEASE_SECONDS, sweep_seconds=SWEEP_SECONDS, webhook_allow="127.0.0.0/8"
    )
    async with Service(settings) as svc:
        yield svc


ROUNDS = 240
TERMINAL = {s.value for s in TaskStatus if s.terminal}


def report_for(kind: str, assignment: wpb.Assignment) -> dict[str, object]:
    task = ref(assignment)
    return {
        "complete": {"complete": wpb.CompleteTask(task=task, text="done")},
        "fail": {"fail": wpb.FailTask(task=task, code="BROKEN", message="no")},
        "progress": {"progress": wpb.ReportProgress(task=task, percent=50, text="half")},
        "request_input": {"request_input": wpb.RequestInput(task=task, prompt="which?")},
        "output": {"output": wpb.AppendOutput(task=task, chunk="x")},
    }[kind]


async def test_cancel_raced_against_every_kind_of_report_ends_each_task_once(
    client: Api,
    agent_id: str,
    workers: Callable[..., Awaitable[RawWorker]],
) -> None:
    rng = random.Random(7)
    kinds = ["complete", "fail", "progress", "request_input", "output"]
    worker = await workers(agent_id, capacity=16)
    async with Receiver() as receiver:
        outcomes: Counter[str] = Counter()
        ids: list[str] = []
        hooked: set[str] = set()

        async def one(i: int) -> None:
            webhook = i % 3 == 0
            fields = {"callback_mode": "webhook", "webhook_url": receiver.url()} if webhook else {}
            task_id = (await client.submit(agent_id, f"race {i}", **fields)).task_id
            ids.append(task_id)
            if webhook:
                hooked.add(task_id)
            assignment = await worker.next_assignment()
            kind = kinds[i % len(kinds)]

            async def cancel() -> str:
                await asyncio.sleep(rng.random() * 0.002)
                try:
                    await client.tasks.Cancel(
                        tpb.CancelRequest(agent_id=agent_id, task_id=assignment.task.task_id), metadata=client.metadata
                    )
                    return "cancel ok"
                except grpc.aio.AioRpcError as error:
                    return "cancel " + error_info(error)[1]

            async def report() -> str:
                await asyncio.sleep(rng.random() * 0.002)
                ack = await worker.send(**report_for(kind, assignment))
                return f"{kind} " + (reason_of(ack) if ack.code else "ok")

            for outcome in await asyncio.gather(cancel(), report()):
                outcomes[outcome] += 1
            if kind not in ("complete", "fail"):  # the task may still run: end it as a worker would
                ack = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="later"))
                outcomes[f"then complete {reason_of(ack) if ack.code else 'ok'}"] += 1

        for i in range(ROUNDS):
            await one(i)

        finals: dict[str, str] = {}
        for task_id in ids:
            answer = await client.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata
            )
            finals[task_id] = answer.task.status
            events = [
                e
                async for e in client.tasks.WatchTask(
                    tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=1),
                    metadata=client.metadata,
                )
            ]
            ends = [e for e in events if e.type == "status" and e.status in TERMINAL]
            assert len(ends) == 1, (task_id, [(e.type, e.status) for e in events])
            assert ends[0].status == answer.task.status

        await asyncio.sleep(1.0)  # webhooks due by now have been sent (retries are not the point)
        sent = [(r.json()["data"]["task_id"], r.json()["type"]) for r in receiver.requests]

    assert set(finals.values()) <= TERMINAL
    assert {"cancel ok", "cancel TASK_ALREADY_FINISHED"} & set(outcomes)  # both sides won sometimes
    assert outcomes["complete ok"] + outcomes["fail ok"] > 0 and outcomes["cancel ok"] > 0, outcomes
    assert not {o for o in outcomes if o.endswith("INTERNAL") or o.endswith("UNKNOWN")}, outcomes
    cancelled = {t for t, status in finals.items() if status == "cancelled"}
    assert not [(t, kind) for t, kind in sent if t in cancelled and kind == "task.completed"], sent
    # Statuses never change once terminal: read again, the same.
    for task_id, status in finals.items():
        answer = await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata
        )
        assert answer.task.status == status
