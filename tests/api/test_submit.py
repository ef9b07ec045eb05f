"""Submit over real gRPC: answers, validation of every field, agent states, nothing written on error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

from agenttasks.app import Service
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, error_info

pytestmark = pytest.mark.asyncio


def metadata(value: dict[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


async def test_submit_answers_the_documented_fields(client: Api, agent_id: str) -> None:
    before = datetime.now(UTC)
    answer = await client.submit(agent_id, "summarise the report", priority=7, metadata=metadata({"team": "x"}))
    assert uuid.UUID(answer.task_id).version == 7
    assert answer.status == "queued"
    assert answer.agent_id == agent_id
    created = answer.created_at.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    assert answer.estimated_start.ToDatetime(tzinfo=UTC) >= created
    assert answer.poll_url == f"http://api.test/agent/{agent_id}/task/{answer.task_id}"
    assert answer.cancel_url == f"http://api.test/agent/{agent_id}/task/{answer.task_id}/cancel"

    task = (
        await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=client.metadata
        )
    ).task
    assert (task.status, task.priority, task.message) == ("queued", 7, "summarise the report")
    assert dict(task.metadata) == {"team": "x"}
    assert task.callback_mode == "poll"
    assert task.timeout_seconds == 3600  # the agent's default
    assert task.last_sequence == 1


async def test_defaults_priority_5_and_agent_timeout(client: Api) -> None:
    agent_id = await client.create_agent("slow", default_timeout_seconds=120)
    answer = await client.submit(agent_id)
    task = (
        await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=client.metadata
        )
    ).task
    assert (task.priority, task.timeout_seconds) == (5, 120)
    answer = await client.submit(agent_id, timeout_override=30)
    task = (
        await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=client.metadata
        )
    ).task
    assert task.timeout_seconds == 30


async def test_estimated_start_grows_with_the_queue_ahead(client: Api, agent_id: str) -> None:
    first = await client.submit(agent_id, priority=5)
    second = await client.submit(agent_id, priority=5)
    urgent = await client.submit(agent_id, priority=9)
    assert second.estimated_start.ToDatetime() > first.estimated_start.ToDatetime()
    # Nothing queued ahead of the highest priority: it may start right away.
    assert urgent.estimated_start.ToDatetime() == urgent.created_at.ToDatetime()


BAD_SUBMITS = [
    ({"message": ""}, "message"),
    ({"message": "   "}, "message"),
    ({"message": "x" * (256 * 1024 + 1)}, "message"),
    ({"priority": 0}, "priority"),
    ({"priority": 11}, "priority"),
    ({"priority": -3}, "priority"),
    ({"timeout_override": 0}, "timeout_override"),
    ({"timeout_override": -1}, "timeout_override"),
    ({"timeout_override": 7 * 86400 + 1}, "timeout_override"),
    ({"callback_mode": "email"}, "callback_mode"),
    ({"callback_mode": "webhook"}, "webhook_url"),
    ({"callback_mode": "webhook", "webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({"callback_mode": "webhook", "webhook_url": "not a url"}, "webhook_url"),
    ({"callback_mode": "webhook", "webhook_url": "https://user:pw@example.com/"}, "webhook_url"),
    ({"webhook_url": "https://example.com/hook"}, "webhook_url"),
    ({"metadata": metadata({"k": "v" * 20000})}, "metadata"),
    ({"metadata": metadata({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}})}, "metadata"),
    ({"request_id": "x" * 129}, "request_id"),
    ({"request_id": "has spaces"}, "request_id"),
    ({"message": "a NUL \x00 in the middle"}, "message"),  # PostgreSQL text cannot hold one
]


@pytest.mark.parametrize(("fields", "field"), BAD_SUBMITS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_SUBMITS)])
async def test_bad_input_is_invalid_argument_naming_the_field(
    client: Api, agent_id: str, fields: dict[str, object], field: str
) -> None:
    request = {"message": "ok", **fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.Submit(tpb.SubmitRequest(agent_id=agent_id, **request), metadata=client.metadata)
    code, reason, fields_named = error_info(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field in fields_named
    assert field in (caught.value.details() or "")
    listed = await client.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=client.metadata)
    assert list(listed.tasks) == []  # nothing was written


async def test_all_violations_are_reported_together(client: Api, agent_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.Submit(
            tpb.SubmitRequest(agent_id=agent_id, message="", priority=42, callback_mode="fax"), metadata=client.metadata
        )
    _, _, fields = error_info(caught.value)
    assert set(fields) == {"message", "priority", "callback_mode"}


async def test_webhook_task_is_accepted_with_a_url(client: Api, agent_id: str) -> None:
    answer = await client.submit(agent_id, callback_mode="webhook", webhook_url="https://hooks.example.com/done")
    assert answer.status == "queued"


@pytest.mark.parametrize("bad_id", ["", "nope", "123", "../etc"])
async def test_malformed_agent_id_is_invalid_argument(client: Api, bad_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(bad_id)
    code, _, fields = error_info(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["agent_id"]


async def test_unknown_agent_is_not_found(client: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(str(uuid.uuid4()))
    assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


@pytest.mark.parametrize("rpc", ["PauseAgent", "StopAgent"])
async def test_paused_or_stopped_agent_is_unavailable(client: Api, agent_id: str, rpc: str) -> None:
    request = getattr(apb, f"{rpc}Request")(agent_id=agent_id)
    await getattr(client.agents, rpc)(request, metadata=client.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(agent_id)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "AGENT_UNAVAILABLE")
    await client.agents.ResumeAgent(apb.ResumeAgentRequest(agent_id=agent_id), metadata=client.metadata)
    assert (await client.submit(agent_id)).status == "queued"


async def test_agent_in_error_is_unavailable(client: Api, agent_id: str) -> None:
    await client.agents.SetAgentStatus(
        apb.SetAgentStatusRequest(agent_id=agent_id, status="error", status_message="model quota exhausted"),
        metadata=client.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(agent_id)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "AGENT_UNAVAILABLE")
    assert "error" in (caught.value.details() or "")


async def test_paused_agent_keeps_its_queue(client: Api, agent_id: str) -> None:
    answer = await client.submit(agent_id)
    await client.agents.PauseAgent(apb.PauseAgentRequest(agent_id=agent_id), metadata=client.metadata)
    task = (
        await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=client.metadata
        )
    ).task
    assert task.status == "queued"


async def test_submit_persists_across_restart(service: Service, client: Api, agent_id: str) -> None:
    answer = await client.submit(agent_id, "remember me")
    task = await service.store.read(lambda tx: tx.get_task("default", answer.task_id))
    assert task is not None and task.message == "remember me"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_metadata_numbers_are_invalid_argument(client: Api, agent_id: str, number: float) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(agent_id, metadata=metadata({"budget": number}))
    assert error_info(caught.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, ["metadata"])
