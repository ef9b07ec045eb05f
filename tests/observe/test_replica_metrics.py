"""Two servers on one PostgreSQL database: per-server series sum to the store's totals (a change
one server relays from the other is not counted twice), store-wide ones are the same on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.v1 import task_service_pb2 as tpb
from tests.cli.support import free_port
from tests.observe.scraping import scrape, scrape_until, value
from tests.support import PostgresDatabases, api_for, make_settings

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def pair(postgres_databases: PostgresDatabases) -> AsyncIterator[tuple[Service, Service]]:
    with postgres_databases.database() as url:
        async with (
            Service(make_settings(url, metrics_port=free_port())) as a,
            Service(make_settings(url, metrics_port=free_port())) as b,
        ):
            for server in (a, b):
                assert server.metrics is not None
                server.metrics.figures.max_age = 0
            yield a, b


async def test_replicas_count_their_own_work_and_agree_on_the_store(pair: tuple[Service, Service]) -> None:
    a, b = pair
    assert a.metrics is not None and b.metrics is not None and a.bootstrap_key is not None
    on_a, on_b = api_for(a.address, a.bootstrap_key), api_for(b.address, a.bootstrap_key)
    try:
        agent = await on_a.create_agent("shared")
        submitted_on_a = [(await on_a.submit(agent, f"a{i}")).task_id for i in range(4)]
        for i in range(6):
            await on_b.submit(agent, f"b{i}")

        # B watches a task of A's; A cancels it: B hears of the change and relays it to its watcher.
        request = tpb.WatchTaskRequest(agent_id=agent, task_id=submitted_on_a[0])
        stream = on_b.tasks.WatchTask(request, metadata=on_b.metadata)
        iterator = aiter(stream)
        assert (await anext(iterator)).type == "snapshot"
        watching = await scrape(b.metrics.url)
        assert value(watching, "agenttasks_watch_streams_open") == 1
        await on_a.tasks.Cancel(tpb.CancelRequest(agent_id=agent, task_id=submitted_on_a[0]), metadata=on_a.metadata)
        rest = [message async for message in iterator]
        assert [m.type for m in rest] == ["status", "end"]  # B did relay A's change

        seen_a = await scrape(a.metrics.url)
        seen_b = await scrape_until(b.metrics.url, lambda s: value(s, "agenttasks_watch_streams_open") == 0)
    finally:
        await asyncio.gather(on_a.channel.close(), on_b.channel.close())

    submitted = [value(s, "agenttasks_tasks_submitted_total") for s in (seen_a, seen_b)]
    assert submitted == [4, 6]
    cancelled = {"status": "cancelled", "reason": "CANCELLED_BY_CLIENT"}
    assert value(seen_a, "agenttasks_tasks_finished_total", **cancelled) == 1
    assert value(seen_b, "agenttasks_tasks_finished_total", **cancelled) is None
    # Store-wide: both show the whole queue (9), which is why these are aggregated with max.
    for seen in (seen_a, seen_b):
        assert value(seen, "agenttasks_store_tasks", tenant="default", agent_id=agent, status="queued") == 9
