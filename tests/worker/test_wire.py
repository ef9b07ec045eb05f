"""How the SDK puts its reports on the wire: queued together, they leave in one ReportBatch,
but only once the server's welcome said it reads batches."""

from __future__ import annotations

import asyncio

import pytest

from agenttasks.v1 import worker_service_pb2 as wpb
from agenttasks.worker.connection import MAX_BATCH_BYTES, MAX_REPORTS_PER_MESSAGE, _requests, _Wire

pytestmark = pytest.mark.asyncio


def heartbeat(n: int) -> wpb.ConnectRequest:
    return wpb.ConnectRequest(request_id=n, heartbeat=wpb.Heartbeat())


async def sent(wire: _Wire, queued: list[wpb.ConnectRequest | None]) -> list[wpb.ConnectRequest]:
    outbox: asyncio.Queue[wpb.ConnectRequest | None] = asyncio.Queue()
    for item in queued:
        outbox.put_nowait(item)
    return [message async for message in _requests(outbox, wire)]


async def test_reports_queued_together_leave_in_one_batch_when_the_server_reads_them() -> None:
    messages = await sent(_Wire(batches=True), [heartbeat(1), heartbeat(2), heartbeat(3), None])
    assert len(messages) == 1 and messages[0].WhichOneof("kind") == "batch"
    assert [r.request_id for r in messages[0].batch.reports] == [1, 2, 3]


async def test_an_older_server_gets_them_one_by_one() -> None:
    messages = await sent(_Wire(batches=False), [heartbeat(1), heartbeat(2), heartbeat(3), None])
    assert [(m.WhichOneof("kind"), m.request_id) for m in messages] == [("heartbeat", n) for n in (1, 2, 3)]


async def test_a_lone_report_is_not_wrapped_and_a_batch_has_a_bound() -> None:
    assert [m.WhichOneof("kind") for m in await sent(_Wire(batches=True), [heartbeat(1), None])] == ["heartbeat"]
    many = [heartbeat(n) for n in range(1, MAX_REPORTS_PER_MESSAGE + 3)]
    messages = await sent(_Wire(batches=True), [*many, None])
    assert [len(m.batch.reports) or 1 for m in messages] == [MAX_REPORTS_PER_MESSAGE, 2]
    assert [r.request_id for m in messages for r in m.batch.reports] == [r.request_id for r in many]


async def test_a_batch_stays_under_the_byte_bound_and_a_big_report_still_goes_alone() -> None:
    def complete(n: int, size: int) -> wpb.ConnectRequest:
        task = wpb.TaskRef(task_id=f"t{n}", attempt=1)
        return wpb.ConnectRequest(request_id=n, complete=wpb.CompleteTask(task=task, text="x" * size))

    mib = 1024 * 1024
    queued = [complete(1, mib), complete(2, mib), complete(3, mib), complete(4, mib), complete(5, 5 * mib)]
    messages = await sent(_Wire(batches=True), [*queued, complete(6, 10), None])
    for message in messages:
        if message.WhichOneof("kind") == "batch":
            assert message.ByteSize() <= MAX_BATCH_BYTES + 64  # the wrapper's few bytes
    ids = [r.request_id for m in messages for r in (m.batch.reports or [m])]
    assert ids == [1, 2, 3, 4, 5, 6]  # none lost, none reordered
    assert [len(m.batch.reports) or 1 for m in messages] == [3, 1, 1, 1]  # 3 x 1 MiB fit; 4 would not
