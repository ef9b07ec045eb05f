"""How the SDK puts its reports on the wire: queued together, they leave in one ReportBatch,
but only once the server's welcome said it reads batches."""

from __future__ import annotations

import asyncio

import pytest

from agenttasks.v1 import worker_service_pb2 as wpb
from agenttasks.worker.connection import MAX_REPORTS_PER_MESSAGE, _requests, _Wire

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
