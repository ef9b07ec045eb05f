"""GetStatus, SendMessage, Cancel and ListTasks over real gRPC, with idempotency and tenants."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import grpc
import pytest

from agenttasks.app import Service
from agenttasks.core.dispatch import MAX_OUTPUT_BYTES
from agenttasks.core.model import TaskStatus, utcnow
from agenttasks.core.ports import WriteTx
from agenttasks.core.tasks import MAX_PAGE_BYTES
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, error_info, write_output

pytestmark = pytest.mark.asyncio


async def get(api: Api, agent_id: str, task_id: str) -> tpb.GetStatusResponse:
    answer: tpb.GetStatusResponse = await api.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata
    )
    return answer


async def cancel(api: Api, agent_id: str, task_id: str) -> tpb.CancelResponse:
    answer: tpb.CancelResponse = await api.tasks.Cancel(
        tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata
    )
    return answer


async def finish(service: Service, task_id: str, status: TaskStatus) -> None:
    """Put a task in a terminal status directly in the store (workers come in a later issue)."""

    def op(tx):  # type: ignore[no-untyped-def]
        task = tx.get_task("default", task_id)
        tx.update_task(replace(task, status=status, completed_at=utcnow()))

    await service.store.write(op)


async def test_cancel_of_a_queued_task_cancels_it_at_once(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    answer = await cancel(client, agent_id, task_id)
    assert answer.task.status == "cancelled"
    assert answer.task.status_reason == "CANCELLED_BY_CLIENT"
    assert answer.task.HasField("completed_at")
    assert (await get(client, agent_id, task_id)).task.status == "cancelled"


async def test_cancel_of_a_cancelled_task_returns_it_unchanged(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    first = await cancel(client, agent_id, task_id)
    again = await cancel(client, agent_id, task_id)
    assert again.task == first.task


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED])
async def test_cancel_of_a_finished_task_is_failed_precondition(
    service: Service, client: Api, agent_id: str, status: TaskStatus
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    await finish(service, task_id, status)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cancel(client, agent_id, task_id)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TASK_ALREADY_FINISHED")
    assert (await get(client, agent_id, task_id)).task.status == status.value


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_send_message_to_a_terminal_task_is_failed_precondition(
    service: Service, client: Api, agent_id: str, status: TaskStatus
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    await finish(service, task_id, status)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.SendMessage(
            tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="hello"), metadata=client.metadata
        )
    assert error_info(caught.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "TASK_ALREADY_FINISHED")


async def test_send_message_to_a_queued_task_is_kept(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    answer = await client.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="also check page 4"),
        metadata=client.metadata,
    )
    assert answer.status == "queued"
    assert uuid.UUID(answer.message_id)
    assert (await get(client, agent_id, task_id)).task.last_sequence == 2


async def test_empty_message_is_invalid(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.SendMessage(
            tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message=""), metadata=client.metadata
        )
    assert error_info(caught.value)[2] == ["message"]


async def test_nul_characters_are_invalid_argument_on_every_store(client: Api, agent_id: str) -> None:
    # PostgreSQL's text cannot hold U+0000: refused everywhere, naming the field, never INTERNAL.
    task_id = (await client.submit(agent_id)).task_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.SendMessage(
            tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="a\x00b"), metadata=client.metadata
        )
    assert error_info(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["message"])
    for fields, named in (({"name": "a\x00b"}, "name"), ({"name": "ok", "description": "a\x00b"}, "description")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.agents.CreateAgent(apb.CreateAgentRequest(**fields), metadata=client.metadata)
        assert error_info(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", [named])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.agents.UpdateAgent(
            apb.UpdateAgentRequest(agent_id=agent_id, name="a\x00b"), metadata=client.metadata
        )
    assert error_info(caught.value)[2] == ["name"]


async def test_task_under_another_agent_is_not_found(client: Api, agent_id: str) -> None:
    other_agent = await client.create_agent("other")
    task_id = (await client.submit(agent_id)).task_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(client, other_agent, task_id)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")


async def test_wildcard_agent_finds_the_task(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    assert (await get(client, "-", task_id)).task.agent_id == agent_id


async def test_list_newest_first_with_status_filter_and_paging(client: Api, agent_id: str) -> None:
    ids = [(await client.submit(agent_id, f"task {i}")).task_id for i in range(7)]
    await cancel(client, agent_id, ids[1])
    await cancel(client, agent_id, ids[4])

    seen, token = [], ""
    while True:
        page = await client.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, page_size=3, page_token=token), metadata=client.metadata
        )
        assert len(page.tasks) <= 3
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]

    cancelled = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, status="cancelled"), metadata=client.metadata
    )
    assert [t.task_id for t in cancelled.tasks] == [ids[4], ids[1]]
    queued = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, status="queued"), metadata=client.metadata
    )
    assert len(queued.tasks) == 5


async def test_a_page_of_big_tasks_stays_under_the_message_limit(service: Service, client: Api, agent_id: str) -> None:
    """A task may hold 1 MiB of output and 1 MiB of result; fifty of them would be a 100 MiB
    message, far past what a gRPC client (4 MiB) or Envoy accepts. A page stops short instead."""
    ids = [(await client.submit(agent_id, f"task {i}")).task_id for i in range(9)]

    def fill(tx: WriteTx) -> None:
        for task_id in ids:
            write_output(tx, task_id, "o" * MAX_OUTPUT_BYTES, result="r" * 500_000)

    await service.store.write(fill)
    seen, token, pages = [], "", 0
    while True:
        page = await client.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, page_size=50, page_token=token), metadata=client.metadata
        )
        assert page.ByteSize() <= MAX_PAGE_BYTES
        assert all(len(t.output) == MAX_OUTPUT_BYTES for t in page.tasks)  # whole tasks, never cut
        seen += [t.task_id for t in page.tasks]
        pages += 1
        if not (token := page.next_page_token):
            break
    assert seen == ids[::-1]  # nothing skipped, nothing twice
    assert pages >= 4


async def test_pages_longer_than_one_read_are_whole(client: Api, agent_id: str) -> None:
    request = tpb.BatchSubmitRequest(
        agent_id=agent_id, requests=[tpb.SubmitRequest(message=f"t{i}") for i in range(120)]
    )
    ids = [a.task_id for a in (await client.tasks.BatchSubmit(request, metadata=client.metadata)).responses]
    everything = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, page_size=500), metadata=client.metadata
    )
    assert [t.task_id for t in everything.tasks] == ids[::-1] and not everything.next_page_token
    first = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, page_size=100), metadata=client.metadata
    )
    rest = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, page_size=100, page_token=first.next_page_token),
        metadata=client.metadata,
    )
    assert [t.task_id for t in [*first.tasks, *rest.tasks]] == ids[::-1]
    assert (len(first.tasks), len(rest.tasks), rest.next_page_token) == (100, 20, "")


async def test_page_tokens_are_opaque_and_bound_to_the_query(client: Api, agent_id: str) -> None:
    for _ in range(3):
        await client.submit(agent_id)
    page = await client.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id, page_size=1), metadata=client.metadata)
    token = page.next_page_token
    assert token and page.tasks[0].task_id not in token
    for bad in [token[:-4] + "AAAA", "garbage"]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.tasks.ListTasks(
                tpb.ListTasksRequest(agent_id=agent_id, page_token=bad), metadata=client.metadata
            )
        assert error_info(caught.value)[2] == ["page_token"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # same token, other filter
        await client.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, status="queued", page_token=token), metadata=client.metadata
        )
    assert error_info(caught.value)[2] == ["page_token"]


@pytest.mark.parametrize(("field", "value"), [("status", "done"), ("page_size", -1)])
async def test_list_rejects_bad_filters(client: Api, agent_id: str, field: str, value: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, **{field: value}), metadata=client.metadata
        )
    assert error_info(caught.value)[2] == [field]


async def test_list_of_unknown_agent_is_not_found(client: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.ListTasks(tpb.ListTasksRequest(agent_id=str(uuid.uuid4())), metadata=client.metadata)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")


# --- idempotency ---


async def test_submit_retry_with_the_same_key_returns_the_original(client: Api, agent_id: str) -> None:
    first = await client.submit(agent_id, "once", request_id="order-42")
    again = await client.submit(agent_id, "once", request_id="order-42")
    assert again == first
    listed = await client.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=client.metadata)
    assert [t.task_id for t in listed.tasks] == [first.task_id]


async def test_idempotency_key_header_works_like_the_field(client: Api, agent_id: str) -> None:
    request = tpb.SubmitRequest(agent_id=agent_id, message="via header")
    headers = (*client.metadata, ("idempotency-key", "hdr-1"))
    first = await client.tasks.Submit(request, metadata=headers)
    again = await client.tasks.Submit(request, metadata=headers)
    assert again.task_id == first.task_id
    by_field = await client.submit(agent_id, "via header", request_id="hdr-1")
    assert by_field.task_id == first.task_id


async def test_same_key_with_a_different_body_is_refused(client: Api, agent_id: str) -> None:
    await client.submit(agent_id, "first body", request_id="k-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.submit(agent_id, "second body", request_id="k-1")
    assert error_info(caught.value)[:2] == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_keys_are_per_tenant(client: Api, other_tenant: Api, agent_id: str) -> None:
    mine = await client.submit(agent_id, "x", request_id="shared-key")
    other_agent = await other_tenant.create_agent("theirs")
    theirs = await other_tenant.submit(other_agent, "y", request_id="shared-key")
    assert theirs.task_id != mine.task_id


async def test_concurrent_retries_create_one_task(client: Api, agent_id: str) -> None:
    answers = await asyncio.gather(*(client.submit(agent_id, "race", request_id="race-1") for _ in range(20)))
    assert len({a.task_id for a in answers}) == 1


async def test_send_message_retry_returns_the_original(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    request = tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="hi", request_id="m-1")
    first = await client.tasks.SendMessage(request, metadata=client.metadata)
    again = await client.tasks.SendMessage(request, metadata=client.metadata)
    assert again == first
    assert (await get(client, agent_id, task_id)).task.last_sequence == 2
    request.message = "different"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.SendMessage(request, metadata=client.metadata)
    assert error_info(caught.value)[1] == "IDEMPOTENCY_KEY_REUSED"


async def test_field_and_header_keys_must_agree(client: Api, agent_id: str) -> None:
    request = tpb.SubmitRequest(agent_id=agent_id, message="m", request_id="a")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.Submit(request, metadata=(*client.metadata, ("idempotency-key", "b")))
    assert error_info(caught.value)[2] == ["request_id"]


# --- tenants ---


async def test_another_tenants_ids_answer_exactly_like_missing_ones(
    client: Api, other_tenant: Api, agent_id: str
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    missing_agent, missing_task = str(uuid.uuid4()), str(uuid.uuid4())

    async def outcome(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        code, reason, _ = error_info(caught.value)
        return code, reason

    md = other_tenant.metadata
    pairs = [
        (
            other_tenant.tasks.GetStatus(tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=md),
            other_tenant.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=missing_agent, task_id=missing_task), metadata=md
            ),
        ),
        (
            other_tenant.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=md),
            other_tenant.tasks.Cancel(tpb.CancelRequest(agent_id=missing_agent, task_id=missing_task), metadata=md),
        ),
        (other_tenant.submit(agent_id), other_tenant.submit(missing_agent)),
        (
            other_tenant.agents.GetAgent(apb.GetAgentRequest(agent_id=agent_id), metadata=md),
            other_tenant.agents.GetAgent(apb.GetAgentRequest(agent_id=missing_agent), metadata=md),
        ),
        (
            other_tenant.agents.PauseAgent(apb.PauseAgentRequest(agent_id=agent_id), metadata=md),
            other_tenant.agents.PauseAgent(apb.PauseAgentRequest(agent_id=missing_agent), metadata=md),
        ),
        (
            other_tenant.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=md),
            other_tenant.tasks.ListTasks(tpb.ListTasksRequest(agent_id=missing_agent), metadata=md),
        ),
    ]
    for theirs, missing in pairs:
        assert await outcome(theirs) == await outcome(missing)
        # the messages differ only by the id they name
    listed = await other_tenant.agents.ListAgents(apb.ListAgentsRequest(), metadata=md)
    assert agent_id not in [a.agent_id for a in listed.agents]
    # And nothing changed for the owner.
    assert (await get(client, agent_id, task_id)).task.status == "queued"


async def test_concurrent_submits_lose_and_duplicate_nothing(client: Api, agent_id: str) -> None:
    answers = await asyncio.gather(*(client.submit(agent_id, f"job {i}") for i in range(300)))
    ids = [a.task_id for a in answers]
    assert len(set(ids)) == 300
    seen, token = [], ""
    while True:
        page = await client.tasks.ListTasks(
            tpb.ListTasksRequest(agent_id=agent_id, page_size=500, page_token=token), metadata=client.metadata
        )
        seen += [(t.task_id, t.message) for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(zip(ids, [f"job {i}" for i in range(300)], strict=True))


async def test_deleting_an_agent_clears_a_long_history_in_bounded_writes(
    service: Service, client: Api, agent_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agenttasks.core.agents.DELETE_BATCH", 3)
    finished = [(await client.submit(agent_id, f"old {i}")).task_id for i in range(7)]
    for task_id in finished:
        await finish(service, task_id, TaskStatus.COMPLETED)
    queued = (await client.submit(agent_id, "still queued")).task_id
    before = service.store.stats()  # type: ignore[attr-defined]

    answer = await client.agents.DeleteAgent(apb.DeleteAgentRequest(agent_id=agent_id), metadata=client.metadata)

    assert answer.cancelled_tasks == 1  # the queued one; the history was simply removed
    # 3 + 3 + 1 finished tasks, the queued one cancelled, then the agent itself.
    assert service.store.stats().writes - before.writes == 5  # type: ignore[attr-defined]
    for task_id in [*finished, queued]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(client, agent_id, task_id)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_deleting_an_agent_cancels_a_long_backlog_in_bounded_writes(
    service: Service, client: Api, agent_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agenttasks.core.agents.DELETE_BATCH", 3)
    queued = [(await client.submit(agent_id, f"waiting {i}")).task_id for i in range(7)]
    watcher = client.tasks.WatchTask(
        tpb.WatchTaskRequest(agent_id=agent_id, task_id=queued[0]), metadata=client.metadata
    )
    assert (await anext(aiter(watcher))).type == "snapshot"
    before = service.store.stats()  # type: ignore[attr-defined]

    answer = await client.agents.DeleteAgent(apb.DeleteAgentRequest(agent_id=agent_id), metadata=client.metadata)

    assert answer.cancelled_tasks == 7
    # No history to clear (one write finds none), 3 + 3 + 1 cancelled, then the agent itself.
    assert service.store.stats().writes - before.writes == 5  # type: ignore[attr-defined]
    seen = [m async for m in watcher]
    assert [(m.status, m.reason) for m in seen if m.type == "status"] == [("cancelled", "AGENT_DELETED")]
    for task_id in queued:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(client, agent_id, task_id)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
