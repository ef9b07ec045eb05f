"""Webhooks end to end: a real service delivers to real HTTP receivers on loopback (allowed by
the operator setting, except where a test turns the allowance off)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import webhook_service_pb2 as hpb
from agenttasks.v1 import webhook_service_pb2_grpc
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import Api, api_for, error_info, make_settings
from tests.webhooks.receiver import Answer, Receiver

pytestmark = pytest.mark.asyncio

FAST = {"webhook_allow": "127.0.0.0/8", "webhook_retry_schedule": [0.05] * 4, "sweep_seconds": 0.05}


@pytest_asyncio.fixture
async def hooked(db_path: Path) -> AsyncIterator[Service]:
    async with Service(make_settings(db_path, **FAST, webhook_timeout_seconds=5)) as svc:
        yield svc


@pytest_asyncio.fixture
async def admin_api(hooked: Service) -> AsyncIterator[Api]:
    assert hooked.bootstrap_key is not None
    api = api_for(hooked.address, hooked.bootstrap_key)
    yield api
    await api.channel.close()


def hooks(api: Api) -> webhook_service_pb2_grpc.WebhookServiceStub:
    return webhook_service_pb2_grpc.WebhookServiceStub(api.channel)


async def signing_secret(api: Api) -> str:
    answer = await hooks(api).GetSigningSecret(hpb.GetSigningSecretRequest(), metadata=api.metadata)
    return str(answer.secret)


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks signature, computed here from the spec, independently of the server."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def status(api: Api, task_id: str) -> tpb.GetStatusResponse:
    answer: tpb.GetStatusResponse = await api.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id="-", task_id=task_id), metadata=api.metadata
    )
    return answer


async def wait_for_state(api: Api, task_id: str, state: str, count: int = 1, seconds: float = 30) -> list[object]:
    deadline = time.monotonic() + seconds
    while True:
        deliveries = list((await status(api, task_id)).task.webhook_deliveries)
        if sum(d.state == state for d in deliveries) >= count:
            return deliveries  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"no {state} delivery yet: {deliveries}"
        await asyncio.sleep(0.05)


async def submit_hooked(api: Api, agent_id: str, url: str, message: str = "work") -> str:
    answer = await api.submit(agent_id, message, callback_mode="webhook", webhook_url=url)
    return str(answer.task_id)


async def cancel(api: Api, task_id: str) -> None:
    await api.tasks.Cancel(tpb.CancelRequest(agent_id="-", task_id=task_id), metadata=api.metadata)


async def test_a_completed_task_is_posted_signed_with_the_task_as_getstatus_shows_it(
    hooked: Service, admin_api: Api
) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver() as receiver:
        url = receiver.url()
        task_id = await submit_hooked(admin_api, agent_id, url)
        worker = await RawWorker(
            hooked.address, await create_api_key(hooked.store, "default", Role.WORKER), agent_id
        ).start()
        try:
            assignment = await worker.next_assignment()
            for chunk in ("working ", "on it\n"):
                await worker.send(output=wpb.AppendOutput(task=ref(assignment), chunk=chunk))
            await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="all done"))
            [request] = await receiver.wait_for(1)
        finally:
            await worker.close()
        deliveries = await wait_for_state(admin_api, task_id, "delivered")

    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["type"] == "task.completed"
    assert body["timestamp"].endswith("Z")
    data = body["data"]
    assert (data["task_id"], data["status"], data["result"]["text"]) == (task_id, "completed", "all done")
    assert data["output"] == "working on it\n"  # the output, kept as events, is in the snapshot
    assert data["webhook_url"] == url
    shown = (await status(admin_api, task_id)).task
    assert data["completed_at"] == shown.completed_at.ToJsonString()

    [delivery] = deliveries
    assert request.headers["webhook-id"] == delivery.delivery_id  # type: ignore[attr-defined]
    assert (delivery.attempts, delivery.last_status_code) == (1, 200)  # type: ignore[attr-defined]
    secret = await signing_secret(admin_api)
    assert secret.startswith("whsec_")
    signature = expected_signature(
        secret, request.headers["webhook-id"], request.headers["webhook-timestamp"], request.body
    )
    assert request.headers["webhook-signature"] == signature
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300


async def test_awaiting_input_failed_and_cancelled_are_one_delivery_each(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver() as receiver:
        asking = await submit_hooked(admin_api, agent_id, receiver.url("/a"), "ask")
        await submit_hooked(admin_api, agent_id, receiver.url("/f"), "fail")
        queued = await submit_hooked(admin_api, agent_id, receiver.url("/q"), "never runs")
        await cancel(admin_api, queued)
        worker = await RawWorker(
            hooked.address, await create_api_key(hooked.store, "default", Role.WORKER), agent_id, capacity=2
        ).start()
        try:
            for _ in range(2):
                a = await worker.next_assignment()
                if a.task.message == "ask":
                    await worker.send(request_input=wpb.RequestInput(task=ref(a), prompt="which?"))
                else:
                    await worker.send(fail=wpb.FailTask(task=ref(a), code="BAD_INPUT", message="no"))
            await receiver.wait_for(3)
            await cancel(admin_api, asking)
            await receiver.wait_for(4)
        finally:
            await worker.close()
        await asyncio.sleep(0.3)  # a chance for a duplicate to (wrongly) arrive
        seen = sorted((r.path, r.json()["type"]) for r in receiver.requests)
    assert seen == [
        ("/a", "task.awaiting_input"),
        ("/a", "task.cancelled"),
        ("/f", "task.failed"),
        ("/q", "task.cancelled"),
    ]
    awaiting = next(r for r in receiver.requests if r.json()["type"] == "task.awaiting_input").json()
    assert (awaiting["data"]["status"], awaiting["data"]["input_prompt"]) == ("awaiting_input", "which?")
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 4


async def test_poll_tasks_send_no_webhooks(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    task_id = (await admin_api.submit(agent_id)).task_id
    await cancel(admin_api, task_id)
    assert list((await status(admin_api, task_id)).task.webhook_deliveries) == []


async def test_failures_are_retried_with_the_same_webhook_id(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    script = [Answer(500), Answer(502), Answer(200)]
    async with Receiver(lambda n: script[min(n, 2)]) as receiver:
        task_id = await submit_hooked(admin_api, agent_id, receiver.url())
        await cancel(admin_api, task_id)
        requests = await receiver.wait_for(3)
        deliveries = await wait_for_state(admin_api, task_id, "delivered")
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the same bytes every time
    assert deliveries[0].attempts == 3  # type: ignore[attr-defined]


async def test_retry_after_is_honoured(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    arrivals: list[float] = []

    def script(n: int) -> Answer:
        arrivals.append(time.monotonic())
        return Answer(429, {"retry-after": "2"}) if n == 0 else Answer(200)

    async with Receiver(script) as receiver:
        task_id = await submit_hooked(admin_api, agent_id, receiver.url())
        await cancel(admin_api, task_id)
        await receiver.wait_for(2)
    # The schedule alone would retry after 0.05 s; the receiver asked for 2 s.
    assert arrivals[1] - arrivals[0] >= 1.9
    await wait_for_state(admin_api, task_id, "delivered")


async def test_410_gone_stops_retries(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver(lambda n: Answer(410)) as receiver:
        task_id = await submit_hooked(admin_api, agent_id, receiver.url())
        await cancel(admin_api, task_id)
        [delivery] = await wait_for_state(admin_api, task_id, "dead")
        await asyncio.sleep(0.5)  # ten retry periods: none may come
        assert len(receiver.requests) == 1
    assert (delivery.attempts, delivery.last_status_code) == (1, 410)  # type: ignore[attr-defined]
    assert "410" in delivery.last_error  # type: ignore[attr-defined]


async def test_redirects_are_not_followed(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver() as target, Receiver(lambda n: Answer(302, {"location": target.url()})) as redirector:
        task_id = await submit_hooked(admin_api, agent_id, redirector.url())
        await cancel(admin_api, task_id)
        [delivery] = await wait_for_state(admin_api, task_id, "dead")
        assert target.connections == 0
        assert len(redirector.requests) == 5  # the first attempt and the four retries
    assert delivery.last_status_code == 302  # type: ignore[attr-defined]


async def test_a_dead_delivery_can_be_retried_by_hand(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    answers = {"status": 500}
    async with Receiver(lambda n: Answer(answers["status"])) as receiver:
        task_id = await submit_hooked(admin_api, agent_id, receiver.url())
        await cancel(admin_api, task_id)
        [dead] = await wait_for_state(admin_api, task_id, "dead")
        answers["status"] = 204
        retried = await hooks(admin_api).RetryWebhookDelivery(
            hpb.RetryWebhookDeliveryRequest(delivery_id=dead.delivery_id),  # type: ignore[attr-defined]
            metadata=admin_api.metadata,
        )
        assert retried.delivery.state == "pending"
        [done] = await wait_for_state(admin_api, task_id, "delivered")
    assert done.last_status_code == 204  # type: ignore[attr-defined]
    listed = await hooks(admin_api).ListWebhookDeliveries(
        hpb.ListWebhookDeliveriesRequest(agent_id="-", task_id=task_id), metadata=admin_api.metadata
    )
    assert [d.state for d in listed.deliveries] == ["delivered"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # already delivered: nothing to retry
        await hooks(admin_api).RetryWebhookDelivery(
            hpb.RetryWebhookDeliveryRequest(delivery_id=done.delivery_id),  # type: ignore[attr-defined]
            metadata=admin_api.metadata,
        )
    assert error_info(caught.value)[2] == ["delivery_id"]


async def test_rotation_signs_with_both_secrets_during_the_overlap(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    old = await signing_secret(admin_api)
    rotated = await hooks(admin_api).RotateSigningSecret(hpb.RotateSigningSecretRequest(), metadata=admin_api.metadata)
    assert (rotated.previous_secret, rotated.secret != old) == (old, True)
    async with Receiver() as receiver:
        task_id = await submit_hooked(admin_api, agent_id, receiver.url())
        await cancel(admin_api, task_id)
        [request] = await receiver.wait_for(1)
    signatures = request.headers["webhook-signature"].split(" ")
    args = (request.headers["webhook-id"], request.headers["webhook-timestamp"], request.body)
    assert signatures == [expected_signature(rotated.secret, *args), expected_signature(old, *args)]


async def test_signing_secrets_are_admin_only_and_per_tenant(hooked: Service, admin_api: Api) -> None:
    client = api_for(hooked.address, await create_api_key(hooked.store, "default", Role.CLIENT))
    other = api_for(hooked.address, await create_api_key(hooked.store, "elsewhere", Role.ADMIN))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hooks(client).GetSigningSecret(hpb.GetSigningSecretRequest(), metadata=client.metadata)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await signing_secret(other) != await signing_secret(admin_api)
    finally:
        await client.channel.close()
        await other.channel.close()


async def test_a_black_hole_endpoint_does_not_delay_another_tenant(hooked: Service, admin_api: Api) -> None:
    stuck_tenant = api_for(hooked.address, await create_api_key(hooked.store, "stuck", Role.CLIENT))
    try:
        stuck_agent = await stuck_tenant.create_agent()
        agent_id = await admin_api.create_agent()
        async with Receiver(lambda n: Answer(hold=True)) as black_hole, Receiver() as healthy:
            for _ in range(10):
                await cancel(stuck_tenant, await submit_hooked(stuck_tenant, stuck_agent, black_hole.url()))
            await black_hole.wait_for(4)  # the stuck tenant's attempts now hang (5 s timeout each)
            task_id = await submit_hooked(admin_api, agent_id, healthy.url())
            await cancel(admin_api, task_id)
            await healthy.wait_for(1)
            # Delivered while every attempt to the black hole is still hanging.
            assert len(black_hole.requests) == 4 == hooked.settings.webhook_per_tenant
            await wait_for_state(admin_api, task_id, "delivered")
    finally:
        await stuck_tenant.channel.close()


async def test_the_api_answers_while_deliveries_hang(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver(lambda n: Answer(hold=True)) as black_hole:
        for _ in range(4):
            await cancel(admin_api, await submit_hooked(admin_api, agent_id, black_hole.url()))
        await black_hole.wait_for(4)
        answers = await asyncio.gather(*(admin_api.submit(agent_id) for _ in range(20)))
        assert len({a.task_id for a in answers}) == 20


async def test_a_pending_delivery_cannot_be_retried_by_hand(hooked: Service, admin_api: Api) -> None:
    agent_id = await admin_api.create_agent()
    async with Receiver(lambda n: Answer(hold=True)) as black_hole:
        task_id = await submit_hooked(admin_api, agent_id, black_hole.url())
        await cancel(admin_api, task_id)
        await black_hole.wait_for(1)  # in flight right now
        [pending] = (await status(admin_api, task_id)).task.webhook_deliveries
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hooks(admin_api).RetryWebhookDelivery(
                hpb.RetryWebhookDeliveryRequest(delivery_id=pending.delivery_id), metadata=admin_api.metadata
            )
        assert error_info(caught.value)[2] == ["delivery_id"]
        assert len(black_hole.requests) == 1


async def test_tenants_at_their_cap_do_not_starve_the_others(db_path: Path) -> None:
    settings = make_settings(db_path, **FAST, webhook_timeout_seconds=10, webhook_concurrency=8, webhook_per_tenant=2)
    async with Service(settings) as svc:
        apis = [api_for(svc.address, await create_api_key(svc.store, f"stuck-{i}", Role.CLIENT)) for i in range(3)]
        healthy_api = api_for(svc.address, await create_api_key(svc.store, "healthy", Role.CLIENT))
        try:
            async with Receiver(lambda n: Answer(hold=True)) as black_hole, Receiver() as healthy:
                for api in apis:  # three tenants, each with a backlog to a dead endpoint
                    stuck_agent = await api.create_agent()
                    for _ in range(5):
                        await cancel(api, await submit_hooked(api, stuck_agent, black_hole.url()))
                await black_hole.wait_for(6)  # 3 tenants x 2 slots hang; 2 of 8 slots are free
                agent_id = await healthy_api.create_agent()
                await cancel(healthy_api, await submit_hooked(healthy_api, agent_id, healthy.url()))
                await healthy.wait_for(1)
                assert len(black_hole.requests) == 6
        finally:
            for api in [*apis, healthy_api]:
                await api.channel.close()


async def test_an_idle_server_polls_the_outbox_without_writing(hooked: Service) -> None:
    await asyncio.sleep(0.5)  # past the start-up writes (the first idempotency purge)
    before = hooked.store.stats().writes
    await asyncio.sleep(0.5)  # ten polls of the outbox at sweep_seconds 0.05
    assert hooked.store.stats().writes == before  # nothing due: no write, no fsync
