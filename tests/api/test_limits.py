"""Limits that protect the service. A credential over its rate is refused with RESOURCE_EXHAUSTED /
429 and told when to retry, other credentials untouched (over gRPC and through the real Envoy);
a unary call past the server's own deadline is DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.core.rate_limit import TokenBuckets
from agenttasks.gateway import Gateway
from agenttasks.v1 import task_service_pb2 as tpb
from tests.gateway.support import assert_error, http_client
from tests.support import Api, api_for, error_info, make_settings

# A token comes back every 2 s: the burst's calls would have to take that long, even on a loaded
# machine, for one more call to get through.
RATE, BURST = 0.5, 10


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes back every 1/rate s
    assert buckets.take("b") == 0.0  # another credential has its own bucket
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    now[0] += 100
    assert [buckets.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # never more than the burst


def test_the_number_of_buckets_is_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_buckets=100)
    for i in range(1000):
        buckets.take(f"key-{i}")
    assert len(buckets._buckets) == 100


@pytest_asyncio.fixture
async def limited(db_path: Path) -> AsyncIterator[Service]:
    settings = make_settings(db_path, rate_limit_per_second=RATE, rate_limit_burst=BURST)
    async with Service(settings) as service:
        yield service


async def list_tasks(api: Api, agent_id: str) -> None:
    await api.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=api.metadata)


@pytest.mark.asyncio
async def test_over_its_rate_a_credential_is_refused_and_told_when_to_retry(limited: Service) -> None:
    flood = api_for(limited.address, await create_api_key(limited.store, "default", Role.CLIENT))
    calm = api_for(limited.address, await create_api_key(limited.store, "default", Role.CLIENT))
    try:
        agent_id = await flood.create_agent()
        for _ in range(BURST - 1):
            await list_tasks(flood, agent_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_tasks(flood, agent_id)
        await list_tasks(calm, agent_id)  # the other key is untouched

        code, reason, _ = error_info(caught.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        delay = retry_delay(caught.value)
        assert 0 < delay <= 1 / RATE
        trailers = dict(caught.value.trailing_metadata() or ())
        assert trailers["retry-after"] == str(math.ceil(delay))

        await asyncio.sleep(delay)
        await list_tasks(flood, agent_id)  # a token came back
    finally:
        await flood.channel.close()
        await calm.channel.close()


@pytest.mark.asyncio
async def test_over_rest_it_is_429_with_retry_after(limited: Service) -> None:
    key = await create_api_key(limited.store, "default", Role.CLIENT)
    answers: list[httpx.Response] = []
    async with (
        Gateway("127.0.0.1", 0, limited.settings.grpc_host, limited.port) as gateway,
        http_client(gateway, {"x-api-key": key}) as rest,
    ):
        for _ in range(BURST + 2):
            answers.append(await rest.get("/agent/list"))
    assert [a.status_code for a in answers[:BURST]] == [200] * BURST
    refused = answers[-1]
    assert_error(refused, 429, "RATE_LIMITED", "RESOURCE_EXHAUSTED")
    assert refused.headers["retry-after"] in {"1", "2"}  # whole seconds, rounded up


@pytest.mark.asyncio
async def test_a_call_past_the_servers_deadline_is_deadline_exceeded(db_path: Path) -> None:
    """Whatever deadline the client set (here none), the server bounds each unary call."""
    async with Service(make_settings(db_path, call_deadline_seconds=1e-6)) as service:
        api = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.create_agent()
        finally:
            await api.channel.close()
    assert error_info(caught.value)[:2] == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The seconds of the call's RetryInfo detail."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    return float(info.retry_delay.ToTimedelta().total_seconds())


async def submit_refusal(api: Api, agent_id: str) -> tuple[grpc.StatusCode, str, list[str]] | None:
    try:
        await api.submit(agent_id)
    except grpc.aio.AioRpcError as error:
        return error_info(error)
    return None


@pytest.mark.asyncio
async def test_a_tenant_at_its_queued_cap_is_refused_until_a_task_leaves_the_queue(db_path: Path) -> None:
    """The cap counts every agent of the tenant; other tenants, and a replayed request_id, are
    untouched; a batch over the cap writes nothing; a cancel makes room again."""
    async with Service(make_settings(db_path, max_queued_per_tenant=5)) as service:
        api = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        other = api_for(service.address, await create_api_key(service.store, "other", Role.CLIENT))
        try:
            first, second = await api.create_agent(), await api.create_agent()
            kept = await api.submit(first, request_id="kept-1")
            ids = [kept.task_id] + [(await api.submit(a)).task_id for a in (first, first, second, second)]
            assert await submit_refusal(api, second) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_QUEUED", [])
            batch = tpb.BatchSubmitRequest(
                agent_id=first, requests=[tpb.SubmitRequest(agent_id=first, message=m) for m in "ab"]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.tasks.BatchSubmit(batch, metadata=api.metadata)
            assert error_info(caught.value)[1] == "TOO_MANY_QUEUED"
            listed = [
                task.task_id
                for agent_id in (first, second)
                for task in (
                    await api.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=api.metadata)
                ).tasks
            ]
            assert sorted(listed) == sorted(ids)  # nothing of the refused calls
            assert (await api.submit(first, request_id="kept-1")).task_id == kept.task_id  # a replay is answered

            other_agent = await other.create_agent()
            assert [await submit_refusal(other, other_agent) for _ in range(5)] == [None] * 5  # its own cap

            await api.tasks.Cancel(tpb.CancelRequest(agent_id=second, task_id=ids[-1]), metadata=api.metadata)
            for _ in range(200):  # a count at the cap is re-read after QUEUED_RECHECK_SECONDS
                if (refusal := await submit_refusal(api, second)) is None:
                    break
                assert refusal[1] == "TOO_MANY_QUEUED"
                await asyncio.sleep(0.02)
            assert refusal is None
            assert await submit_refusal(api, first) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_QUEUED", [])
        finally:
            await api.channel.close()
            await other.channel.close()


@pytest.mark.asyncio
async def test_while_another_tenant_calls_a_tenant_over_its_running_calls_waits_or_is_refused(db_path: Path) -> None:
    """One running call per tenant: the tenant's calls wait for its slot (a full line is refused
    with TOO_MANY_CALLS) while the other tenant's calls go through at once. Holding the slot from
    the test stands for a call of the tenant that has not finished yet."""
    settings = make_settings(db_path, max_running_calls_per_tenant=1, max_waiting_calls_per_tenant=1)
    async with Service(settings) as service:
        api = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        other = api_for(service.address, await create_api_key(service.store, "other", Role.CLIENT))
        try:
            agent_id, other_agent = await api.create_agent(), await other.create_agent()
            slots = service.gate.slots
            assert slots is not None
            async with slots.slot("default", Role.CLIENT):
                assert await submit_refusal(other, other_agent) is None  # two tenants calling: the caps apply
                waiting = asyncio.create_task(api.submit(agent_id))
                for _ in range(100):  # until it waits in line on the server
                    if slots._lines[("default", Role.CLIENT)].waiting:
                        break
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await api.submit(agent_id)
                assert error_info(caught.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS", [])
                assert retry_delay(caught.value) == 1.0  # told when to try again, as a rate limit is
                assert dict(caught.value.trailing_metadata() or ())["retry-after"] == "1"
                assert [await submit_refusal(other, other_agent) for _ in range(3)] == [None] * 3  # not held up
                assert not waiting.done()
            submitted = await asyncio.wait_for(waiting, 30)  # the slot came free: it ran
            status = await api.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=agent_id, task_id=submitted.task_id), metadata=api.metadata
            )
            assert status.task.status == "queued"
        finally:
            await api.channel.close()
            await other.channel.close()
