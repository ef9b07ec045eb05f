"""The queued tasks a batch of reports reads at once for the places it frees (dispatch._Queued):
handed out in dispatch order, one read for the batch."""

from __future__ import annotations

from typing import Any

import pytest

from agenttasks.app import Service
from agenttasks.core.dispatch import _Queued
from agenttasks.core.model import Task
from agenttasks.core.ports import WriteTx
from tests.support import Api

pytestmark = pytest.mark.asyncio


class CountedReads:
    """The real write view, counting its next_queued reads (and their limits)."""

    def __init__(self, tx: WriteTx) -> None:
        self._tx = tx
        self.limits: list[int] = []

    def next_queued(self, tenant: str, agent_id: str, limit: int) -> list[Task]:
        self.limits.append(limit)
        return self._tx.next_queued(tenant, agent_id, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


async def test_the_queue_ahead_is_read_once_in_dispatch_order(service: Service, client: Api, agent_id: str) -> None:
    ids = [(await client.submit(agent_id, f"job {i}", priority=p)).task_id for i, p in enumerate([5, 9, 5, 1])]

    def hand_out(tx: WriteTx) -> tuple[list[str | None], list[int]]:
        counted = CountedReads(tx)
        view: Any = counted
        queued = _Queued(left=10)  # more reports than queued tasks
        taken = [queued.next(view, "default", agent_id) for _ in range(5)]
        return [t.task_id if t is not None else None for t in taken], counted.limits

    taken, limits = await service.store.write(hand_out)
    assert taken == [ids[1], ids[0], ids[2], ids[3], None]  # priority first, FIFO within one
    assert limits == [10]  # one read; fewer came back, so the store has no more
