"""kill -9 of `serve` in the middle of many concurrent Submits, then a restart on the same store.

Every Submit the server acknowledged is there exactly once; clients that never heard back
retry with their request_id, and that creates no duplicate (the ones that were in fact stored
answer with their first task). Short mode: 1,000 Submits, 64 at a time, on each store; the
SQLite file passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest

from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, api_for

from .support import ServerProcess

pytestmark = pytest.mark.asyncio

SUBMITS = 1000
CONCURRENCY = 64
KILL_AFTER = 300


async def submit(api: Api, agent_id: str, i: int) -> str:
    answer = await api.tasks.Submit(
        tpb.SubmitRequest(agent_id=agent_id, message=f"job {i}", request_id=f"req-{i}"),
        metadata=api.metadata,
        timeout=20,
    )
    return str(answer.task_id)


async def test_acknowledged_submits_survive_kill_9_once_and_retries_make_no_duplicates(store: Path) -> None:
    first = ServerProcess(store)
    try:
        key = first.admin_key()
        api = api_for(first.address(), key)
        agent_id = await api.create_agent("crash")
        acked: dict[int, str] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(SUBMITS):
            queue.put_nowait(i)

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    acked[i] = await submit(api, agent_id, i)
                except grpc.aio.AioRpcError:
                    return  # the server died under this call: its fate is unknown to the client
                if len(acked) == KILL_AFTER:
                    first.proc.kill()  # SIGKILL, mid-flight: other clients' calls are in the air

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        await api.channel.close()
        first.kill()
    finally:
        first.kill()
    assert KILL_AFTER <= len(acked) < SUBMITS

    second = ServerProcess(store)
    try:
        again = api_for(second.address(), key)
        # Every client retries what it did not hear back about; a few also retry what they did.
        retried = {i: await submit(again, agent_id, i) for i in range(SUBMITS) if i not in acked or i % 50 == 0}
        listed: list[str] = []
        token = ""
        while True:
            page = await again.tasks.ListTasks(
                tpb.ListTasksRequest(agent_id=agent_id, page_size=500, page_token=token), metadata=again.metadata
            )
            listed += [t.task_id for t in page.tasks]
            if not (token := page.next_page_token):
                break
        await again.channel.close()
    finally:
        second.stop()
        second.kill()

    assert len(listed) == len(set(listed)) == SUBMITS  # one task per request: none lost, none twice
    assert set(acked.values()) <= set(listed)
    assert all(retried[i] == acked[i] for i in retried if i in acked)  # a retry answers the first task
    if isinstance(store, Path):
        with sqlite3.connect(store) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
