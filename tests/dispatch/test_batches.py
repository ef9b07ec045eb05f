"""Batches on the worker stream: pushes packed together only for a worker that reads them, and
a batch of reports handled exactly as its reports one by one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from google.rpc import code_pb2

from agenttasks.app import Service
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.dispatch.test_dispatch import status
from tests.dispatch.test_same_write_starts import settled_writes
from tests.support import Api

pytestmark = pytest.mark.asyncio

StartWorker = Callable[..., Awaitable[RawWorker]]


@pytest.mark.parametrize("batches", [True, False])
async def test_ready_pushes_are_packed_only_for_a_worker_that_reads_batches(
    client: Api, agent_id: str, workers: StartWorker, batches: bool
) -> None:
    ids = {(await client.submit(agent_id, f"job {i}")).task_id for i in range(20)}
    worker = await workers(agent_id, capacity=20, batches=batches)
    assert worker.welcome is not None and worker.welcome.accepts_batches  # either way, it reads ours
    got = {(await worker.next_assignment()).task.task_id for _ in ids}
    assert got == ids
    if batches:  # the round claimed all twenty at once: they left together
        assert max(worker.message_sizes) > 1
        assert sum(worker.message_sizes) == len(ids)
    else:
        assert set(worker.message_sizes) == {1}


async def test_a_report_batch_is_handled_as_its_reports_in_order(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    for i in range(3):
        await client.submit(agent_id, f"job {i}")
    worker = await workers(agent_id, capacity=3)
    a, b, c = [await worker.next_assignment() for _ in range(3)]
    acks = await worker.send_batch(
        [
            wpb.ConnectRequest(progress=wpb.ReportProgress(task=ref(a), percent=40, text="half")),
            wpb.ConnectRequest(complete=wpb.CompleteTask(task=ref(a), text="a done")),  # after the progress
            wpb.ConnectRequest(progress=wpb.ReportProgress(task=ref(b), percent=150)),  # out of range
            wpb.ConnectRequest(hello=wpb.Hello(agent_id=agent_id, capacity=1)),  # never inside a batch
            wpb.ConnectRequest(batch=wpb.ReportBatch()),  # nor a batch
            wpb.ConnectRequest(complete=wpb.CompleteTask(task=ref(c), text="c done")),
        ]
    )
    assert [ack.code for ack in acks] == [
        code_pb2.OK,
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    assert "batch" in acks[4].message
    done = (await status(client, a.task.task_id)).task
    assert (done.status, done.progress.percent, done.result.text) == ("completed", 40, "a done")
    assert (await status(client, b.task.task_id)).task.status == "running"
    assert (await status(client, c.task.task_id)).task.status == "completed"


async def test_a_report_batch_is_one_write_and_a_refused_report_leaves_the_rest(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    ids = [(await client.submit(agent_id, f"job {i}")).task_id for i in range(5)]
    worker = await workers(agent_id, capacity=3, heartbeat=False)
    a, b, c = [await worker.next_assignment() for _ in range(3)]
    before = await settled_writes(service)
    acks = await worker.send_batch(
        [
            wpb.ConnectRequest(complete=wpb.CompleteTask(task=ref(a), text="a done")),
            wpb.ConnectRequest(
                complete=wpb.CompleteTask(task=wpb.TaskRef(task_id=b.task.task_id, attempt=2), text="not mine")
            ),  # another attempt
            wpb.ConnectRequest(output=wpb.AppendOutput(task=ref(c), chunk="line\n")),
            wpb.ConnectRequest(complete=wpb.CompleteTask(task=ref(c), text="c done")),  # sees the output
        ]
    )
    assert [ack.code for ack in acks] == [code_pb2.OK, code_pb2.FAILED_PRECONDITION, code_pb2.OK, code_pb2.OK]
    assert service.store.stats().writes - before == 1  # all four in one write function
    assert (await status(client, b.task.task_id)).task.status == "running"  # the refused one: untouched
    done = (await status(client, c.task.task_id)).task
    assert (done.status, done.output, done.result.text) == ("completed", "line\n", "c done")
    # The two places freed went to the two queued tasks in that same write.
    assert {(await worker.next_assignment()).task.task_id for _ in range(2)} == set(ids[3:])
