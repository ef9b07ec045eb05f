"""With the operator allowance off, webhooks cannot reach internal addresses: literal ones are
refused at Submit (400), names that resolve to them at each attempt, and nothing connects."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from agenttasks.app import Service
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, error_info
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.asyncio

LITERAL_FORMS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "127.1",
    "127.0.0.1.",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::1]",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "0.0.0.0",  # noqa: S104 - a target to refuse, not a bind
    "255.255.255.255",
    "224.0.0.1",
]


async def test_service_starts_with_the_allowance_off(service: Service) -> None:
    assert service.settings.webhook_allow == ""


@pytest.mark.parametrize("host", LITERAL_FORMS)
async def test_literal_internal_addresses_are_refused_at_submit(client: Api, agent_id: str, host: str) -> None:
    async with Receiver() as receiver:
        url = f"http://{host}:{receiver.port}/hook"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.submit(agent_id, callback_mode="webhook", webhook_url=url)
        assert receiver.connections == 0
    code, reason, fields = error_info(caught.value)
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["webhook_url"])


async def test_a_name_resolving_to_loopback_is_refused_at_each_attempt(
    service: Service, client: Api, agent_id: str
) -> None:
    async with Receiver() as receiver:
        url = f"http://localhost:{receiver.port}/hook"
        task_id = (await client.submit(agent_id, callback_mode="webhook", webhook_url=url)).task_id
        await client.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata)
        deadline = time.monotonic() + 30
        while True:
            task = (
                await client.tasks.GetStatus(
                    tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata
                )
            ).task
            if task.webhook_deliveries and task.webhook_deliveries[0].attempts >= 1:
                break
            assert time.monotonic() < deadline, task.webhook_deliveries
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert receiver.connections == 0
    [delivery] = task.webhook_deliveries
    assert delivery.state == "pending" and delivery.last_status_code == 0
    assert "loopback" in delivery.last_error or "refused" in delivery.last_error, delivery.last_error
