"""The server's packing of pushes: bounded in count and bytes, order kept, the end kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agenttasks.api.worker_servicer import MAX_BATCH_BYTES, MAX_PUSHES_PER_MESSAGE, outgoing
from agenttasks.core.dispatch import Ack, Assign, Push
from agenttasks.core.model import Task
from agenttasks.v1 import worker_service_pb2 as wpb

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def assign(n: int, output_bytes: int) -> Assign:
    task = Task(
        tenant="t",
        task_id=f"task-{n}",
        agent_id="a",
        message="m",
        output="o" * output_bytes,
        created_at=NOW,
        updated_at=NOW,
        deadline_at=NOW + timedelta(hours=1),
    )
    return Assign(task, [])


async def sent(items: list[Push | None], batches: bool = True) -> list[wpb.ConnectResponse]:
    outbox: asyncio.Queue[Push | None] = asyncio.Queue()
    for item in items:
        outbox.put_nowait(item)
    return [message async for message in outgoing(outbox, batches)]


def flat(messages: list[wpb.ConnectResponse]) -> list[wpb.ConnectResponse]:
    return [p for m in messages for p in (m.batch.pushes if m.WhichOneof("kind") == "batch" else [m])]


async def test_pushes_waiting_together_leave_together_in_order_until_the_end() -> None:
    items: list[Push | None] = [Ack(n, None) for n in range(1, MAX_PUSHES_PER_MESSAGE + 6)]
    messages = await sent([*items, None, Ack(999, None)])  # nothing after the end is sent
    assert [len(m.batch.pushes) for m in messages] == [MAX_PUSHES_PER_MESSAGE, 5]
    assert [p.ack.request_id for p in flat(messages)] == list(range(1, MAX_PUSHES_PER_MESSAGE + 6))


async def test_a_batch_stays_under_the_byte_bound_and_a_big_push_still_goes_alone() -> None:
    mib = 1024 * 1024
    items: list[Push | None] = [assign(1, mib), assign(2, mib), assign(3, mib), assign(4, mib)]
    messages = await sent([*items, assign(5, 5 * mib), Ack(6, None), None])
    assert all(m.ByteSize() <= MAX_BATCH_BYTES + 64 for m in messages if m.WhichOneof("kind") == "batch")
    kinds = [p.WhichOneof("kind") for p in flat(messages)]
    assert kinds == ["assign"] * 5 + ["ack"]
    assert [p.assign.task.task_id for p in flat(messages)[:5]] == [f"task-{n}" for n in range(1, 6)]
    # Three 1 MiB tasks fit, a fourth would not; the 5 MiB one goes alone, and nothing joins it.
    assert [len(m.batch.pushes) or 1 for m in messages] == [3, 1, 1, 1]


async def test_a_worker_that_did_not_ask_gets_one_push_per_message() -> None:
    messages = await sent([Ack(1, None), Ack(2, None), Ack(3, None), None], batches=False)
    assert [m.WhichOneof("kind") for m in messages] == ["ack", "ack", "ack"]
