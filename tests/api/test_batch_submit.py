"""BatchSubmit over real gRPC: answers in order, all or nothing, fields named inside the batch,
idempotency per request, and the same agent checks as Submit."""

from __future__ import annotations

import math
from datetime import UTC, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

from agenttasks.core.tasks import DEFAULT_RUN_SECONDS, MAX_BATCH
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, error_info

pytestmark = pytest.mark.asyncio


def item(message: str = "do it", **fields: object) -> tpb.SubmitRequest:
    return tpb.SubmitRequest(message=message, **fields)


async def batch(
    api: Api, agent_id: str, items: list[tpb.SubmitRequest], metadata: tuple[tuple[str, str], ...] = ()
) -> list[tpb.SubmitResponse]:
    request = tpb.BatchSubmitRequest(agent_id=agent_id, requests=items)
    answer = await api.tasks.BatchSubmit(request, metadata=api.metadata + metadata)
    return list(answer.responses)


async def task_ids(api: Api, agent_id: str) -> set[str]:
    page = await api.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id, page_size=500), metadata=api.metadata)
    return {t.task_id for t in page.tasks}


async def refused(api: Api, agent_id: str, items: list[tpb.SubmitRequest]) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch(api, agent_id, items)
    return error_info(caught.value)


async def test_each_request_is_answered_in_order_as_submit_would(client: Api, agent_id: str) -> None:
    meta = struct_pb2.Struct()
    meta.update({"n": 2})
    answers = await batch(
        client,
        agent_id,
        [item("first"), item("second", priority=9, metadata=meta), item("third", timeout_override=30)],
    )
    assert len({a.task_id for a in answers}) == 3
    assert all(a.status == "queued" and a.agent_id == agent_id for a in answers)
    assert all(a.poll_url.endswith(f"/agent/{agent_id}/task/{a.task_id}") for a in answers)
    stored = [
        (
            await client.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=agent_id, task_id=a.task_id), metadata=client.metadata
            )
        ).task
        for a in answers
    ]
    assert [t.message for t in stored] == ["first", "second", "third"]
    assert [t.priority for t in stored] == [5, 9, 5]
    assert dict(stored[1].metadata) == {"n": 2}
    assert [t.timeout_seconds for t in stored] == [3600, 3600, 30]
    assert all(t.status == "queued" and t.last_sequence == 1 for t in stored)


async def test_estimates_count_the_requests_ahead_in_the_same_batch(client: Api, agent_id: str) -> None:
    answers = await batch(client, agent_id, [item(), item(), item(priority=9)])
    starts = [a.estimated_start.ToDatetime(tzinfo=UTC) - a.created_at.ToDatetime(tzinfo=UTC) for a in answers]
    run = timedelta(seconds=DEFAULT_RUN_SECONDS)
    # No worker, no history: one default run time per task queued ahead, the 9 ahead of both 5s.
    assert starts == [run, 2 * run, timedelta(0)]


async def test_one_bad_request_refuses_the_whole_batch_naming_it(client: Api, agent_id: str) -> None:
    before = await task_ids(client, agent_id)
    code, reason, fields = await refused(client, agent_id, [item(), item(), item(priority=11), item(message="")])
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert fields == ["requests[2].priority"]  # the first bad request; nothing of the batch is kept
    assert await task_ids(client, agent_id) == before


async def test_every_bad_field_of_the_bad_request_is_named(client: Api, agent_id: str) -> None:
    _, _, fields = await refused(client, agent_id, [item(message="", callback_mode="webhook", priority=0)])
    assert sorted(fields) == ["requests[0].message", "requests[0].priority", "requests[0].webhook_url"]


async def test_a_request_rejected_while_converting_is_named_inside_the_batch(client: Api, agent_id: str) -> None:
    meta = struct_pb2.Struct()
    meta.update({"x": math.nan})
    _, _, fields = await refused(client, agent_id, [item(), item(metadata=meta)])
    assert fields == ["requests[1].metadata"]


async def test_a_request_may_name_its_agent_only_as_the_batch_does(client: Api, agent_id: str) -> None:
    other = await client.create_agent("other")
    answers = await batch(client, agent_id, [item(agent_id=agent_id)])
    assert answers[0].agent_id == agent_id
    code, _, fields = await refused(client, agent_id, [item(), item(agent_id=other)])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["requests[1].agent_id"])
    assert await task_ids(client, other) == set()


async def test_a_batch_holds_one_to_max_requests(client: Api, agent_id: str) -> None:
    assert (await refused(client, agent_id, []))[2] == ["requests"]
    assert (await refused(client, agent_id, [item()] * (MAX_BATCH + 1)))[2] == ["requests"]
    assert len(await batch(client, agent_id, [item()] * MAX_BATCH)) == MAX_BATCH


async def test_unknown_paused_and_foreign_agents_refuse_it_as_submit_does(
    client: Api, other_tenant: Api, agent_id: str
) -> None:
    foreign = await other_tenant.create_agent("theirs")
    code, reason, _ = await refused(client, foreign, [item()])
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    assert await task_ids(other_tenant, foreign) == set()
    await client.agents.PauseAgent(apb.PauseAgentRequest(agent_id=agent_id), metadata=client.metadata)
    code, reason, _ = await refused(client, agent_id, [item()])
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "AGENT_UNAVAILABLE")
    code, _, fields = await refused(client, "not-a-uuid", [item()])
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["agent_id"])


async def test_a_retried_batch_answers_the_original_tasks(client: Api, agent_id: str) -> None:
    items = [item("a", request_id="key-a"), item("b", request_id="key-b")]
    first = await batch(client, agent_id, items)
    again = await batch(client, agent_id, [*items, item("c", request_id="key-c")])
    assert [a.task_id for a in again[:2]] == [a.task_id for a in first]
    assert again[:2] == first
    assert await task_ids(client, agent_id) == {a.task_id for a in again}  # three tasks, not five
    # A single Submit with the same key and body answers the same task too.
    assert (await client.submit(agent_id, "a", request_id="key-a")).task_id == first[0].task_id


async def test_a_key_reused_with_another_body_refuses_the_whole_batch(client: Api, agent_id: str) -> None:
    await batch(client, agent_id, [item("a", request_id="key-a")])
    before = await task_ids(client, agent_id)
    code, reason, _ = await refused(client, agent_id, [item("new"), item("changed", request_id="key-a")])
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await task_ids(client, agent_id) == before


async def test_the_idempotency_header_is_refused_for_a_batch(client: Api, agent_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch(client, agent_id, [item()], metadata=(("idempotency-key", "k"),))
    assert error_info(caught.value)[0::2] == (grpc.StatusCode.INVALID_ARGUMENT, ["idempotency-key"])
