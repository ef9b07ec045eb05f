"""kill -9 of `serve` in the middle of many concurrent Submits, then a restart on the same store.

Every Submit the server acknowledged is there exactly once; clients that never heard back
retry with their request_id, and that creates no duplicate (the ones that were in fact stored
answer with their first task). Short mode: 1,000 Submits, 64 at a time, on each store (long mode, tests/long_runs.py: 50
rounds of 5,000 on one store); the
SQLite file passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest

from agenttasks.v1 import task_service_pb2 as tpb
from tests.long_runs import report, short_or_long, time_limit
from tests.support import Api, api_for

from .support import PostgresUrl, ServerProcess

pytestmark = [pytest.mark.asyncio, time_limit(60)]

SUBMITS = short_or_long(1000, 5000)
ROUNDS = short_or_long(1, 50)
CONCURRENCY = 64
KILL_AFTER = SUBMITS * 3 // 10
# Nothing works the tasks off, so the rounds pile up a backlog (250,000 in the long mode) from
# 64 clients at full speed: the limits that protect a shared server are not what is tested here.
NO_LIMITS = {"AGENTTASKS_MAX_QUEUED_PER_TENANT": "0", "AGENTTASKS_RATE_LIMIT_PER_SECOND": "0"}


async def submit(api: Api, agent_id: str, i: int) -> str:
    answer = await api.tasks.Submit(
        tpb.SubmitRequest(agent_id=agent_id, message=f"job {i}", request_id=f"req-{agent_id}-{i}"),
        metadata=api.metadata,
        timeout=20,
    )
    return str(answer.task_id)


async def listed_tasks(api: Api, agent_id: str) -> list[str]:
    listed: list[str] = []
    token = ""
    while True:
        page = await api.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, page_size=500, page_token=token), metadata=api.metadata
        )
        listed += [t.task_id for t in page.tasks]
        if not (token := page.next_page_token):
            return listed


async def one_round(store: Path | PostgresUrl, key: str | None) -> tuple[str, tuple[int, int, int, int]]:
    """Submit SUBMITS tasks, kill -9 the server once KILL_AFTER are acknowledged, restart,
    retry, and check. Returns the admin key and (acknowledged, retried, lost, duplicated)."""
    first = ServerProcess(store, env=NO_LIMITS)
    try:
        key = key or first.admin_key()
        api = api_for(first.address(), key)
        agent_id = await api.create_agent("crash")
        acked: dict[int, str] = {}
        failures: list[str] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(SUBMITS):
            queue.put_nowait(i)

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    acked[i] = await submit(api, agent_id, i)
                except grpc.aio.AioRpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")
                    return  # the server died under this call: its fate is unknown to the client
                if len(acked) == KILL_AFTER:
                    first.proc.kill()  # SIGKILL, mid-flight: other clients' calls are in the air

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        await api.channel.close()
        first.kill()
    finally:
        first.kill()
    assert KILL_AFTER <= len(acked) < SUBMITS, failures[:3]

    second = ServerProcess(store, env=NO_LIMITS)
    try:
        again = api_for(second.address(), key)
        # Every client retries what it did not hear back about; a few also retry what they did.
        retried = {i: await submit(again, agent_id, i) for i in range(SUBMITS) if i not in acked or i % 50 == 0}
        listed = await listed_tasks(again, agent_id)
        await again.channel.close()
    finally:
        second.stop()
        second.kill()

    lost, duplicated = len(set(acked.values()) - set(listed)), len(listed) - len(set(listed))
    assert len(listed) == len(set(listed)) == SUBMITS  # one task per request: none lost, none twice
    assert set(acked.values()) <= set(listed)
    assert all(retried[i] == acked[i] for i in retried if i in acked)  # a retry answers the first task
    if isinstance(store, Path):
        with sqlite3.connect(store) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return key, (len(acked), len(retried), lost, duplicated)


async def test_acknowledged_submits_survive_kill_9_once_and_retries_make_no_duplicates(
    store: Path | PostgresUrl,
) -> None:
    key: str | None = None
    totals = [0, 0, 0, 0]
    for _ in range(ROUNDS):  # on one store: each round adds to what the earlier ones left
        key, figures = await one_round(store, key)
        totals = [a + b for a, b in zip(totals, figures, strict=True)]
    acked, retried, lost, duplicated = totals
    report(
        "crash_safety",
        store="sqlite" if isinstance(store, Path) else "postgresql",
        rounds=ROUNDS,
        submits=ROUNDS * SUBMITS,
        acknowledged_before_kill=acked,
        retried=retried,
        lost=lost,
        duplicated=duplicated,
    )
