"""WatchTask over real gRPC: snapshot first, every event in order, resume after a sequence number
(also across a server restart), many watchers each get everything, and the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agenttasks.api import convert
from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import EventType, Role, TaskEvent, TaskStatus, utcnow
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, api_for, error_info, make_settings

pytestmark = pytest.mark.asyncio


def watch(api: Api, agent_id: str, task_id: str, after: int = 0) -> AsyncIterator[tpb.WatchTaskResponse]:
    request = tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=after)
    stream: AsyncIterator[tpb.WatchTaskResponse] = api.tasks.WatchTask(request, metadata=api.metadata)
    return stream


async def send(api: Api, agent_id: str, task_id: str, text: str) -> None:
    await api.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message=text), metadata=api.metadata
    )


async def cancel(api: Api, agent_id: str, task_id: str) -> None:
    await api.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)


async def collect(stream: AsyncIterator[tpb.WatchTaskResponse]) -> list[tpb.WatchTaskResponse]:
    return [message async for message in stream]


async def test_snapshot_then_live_events_in_order_then_end(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id, "watch me")).task_id
    stream = watch(client, agent_id, task_id)
    iterator = aiter(stream)
    snapshot = await anext(iterator)
    assert snapshot.type == "snapshot"
    assert (snapshot.sequence, snapshot.status, snapshot.task.message) == (1, "queued", "watch me")

    for i in range(5):
        await send(client, agent_id, task_id, f"note {i}")
    await cancel(client, agent_id, task_id)
    rest = [m async for m in iterator]
    assert [m.type for m in rest] == ["message"] * 5 + ["status", "end"]
    assert [m.sequence for m in rest[:-1]] == [2, 3, 4, 5, 6, 7]
    assert [m.message.text for m in rest[:5]] == [f"note {i}" for i in range(5)]
    assert (rest[-2].status, rest[-2].reason) == ("cancelled", "CANCELLED_BY_CLIENT")
    assert (rest[-1].reason, rest[-1].status, rest[-1].sequence) == ("TASK_FINISHED", "cancelled", 7)


async def test_watch_of_a_finished_task_is_snapshot_and_end(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    await cancel(client, agent_id, task_id)
    messages = await collect(watch(client, agent_id, task_id))
    assert [m.type for m in messages] == ["snapshot", "end"]
    assert messages[0].task.status == "cancelled"


async def test_resume_after_a_sequence_replays_what_was_missed(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    for i in range(4):
        await send(client, agent_id, task_id, f"m{i}")
    await cancel(client, agent_id, task_id)  # sequences: 1 created, 2-5 messages, 6 cancelled
    messages = await collect(watch(client, agent_id, task_id, after=2))
    assert [(m.type, m.sequence) for m in messages] == [
        ("snapshot", 6),
        ("message", 3),
        ("message", 4),
        ("message", 5),
        ("status", 6),
        ("end", 6),
    ]


async def test_resume_across_a_server_restart(db_path: Path) -> None:
    settings = make_settings(db_path)
    async with Service(settings) as first:
        key = await create_api_key(first.store, "default", Role.CLIENT)
        api = api_for(first.address, key)
        agent_id = await api.create_agent()
        task_id = (await api.submit(agent_id)).task_id
        iterator = aiter(watch(api, agent_id, task_id))
        seen = [await anext(iterator)]
        await send(api, agent_id, task_id, "before restart")
        seen.append(await anext(iterator))
        await first.stop()  # drain: the stream ends with a resumable end message
        ending = [m async for m in iterator]
        await api.channel.close()
    assert [m.type for m in seen] == ["snapshot", "message"]
    assert [(m.type, m.reason) for m in ending] == [("end", "SERVER_SHUTDOWN")]
    last_seen = ending[-1].sequence
    assert last_seen == 2

    async with Service(settings) as second:
        api = api_for(second.address, key)
        try:
            # Written while nobody watched: it must be replayed on resume.
            await send(api, agent_id, task_id, "while away")
            iterator = aiter(watch(api, agent_id, task_id, after=last_seen))
            snapshot = await anext(iterator)
            replay = await anext(iterator)
            await cancel(api, agent_id, task_id)
            rest = [m async for m in iterator]
        finally:
            await api.channel.close()
    assert (snapshot.type, snapshot.sequence) == ("snapshot", 3)
    assert (replay.type, replay.sequence, replay.message.text) == ("message", 3, "while away")
    assert [(m.type, m.sequence) for m in rest] == [("status", 4), ("end", 4)]


async def test_many_watchers_each_get_every_event(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    streams = [aiter(watch(client, agent_id, task_id)) for _ in range(50)]
    snapshots = await asyncio.gather(*(anext(s) for s in streams))
    assert {s.type for s in snapshots} == {"snapshot"}
    for i in range(10):
        await send(client, agent_id, task_id, f"event {i}")
    await cancel(client, agent_id, task_id)
    results = await asyncio.gather(*(collect(s) for s in streams))  # type: ignore[arg-type]
    expected = [*range(2, 13), 12]
    for messages in results:
        assert [m.sequence for m in messages] == expected
        assert messages[-1].type == "end"


async def test_a_watcher_that_falls_behind_still_gets_everything(service: Service, client: Api, agent_id: str) -> None:
    from agenttasks.core import watch as watch_module

    task_id = (await client.submit(agent_id)).task_id
    iterator = aiter(watch(client, agent_id, task_id))
    await anext(iterator)
    limit = watch_module.QUEUE_LIMIT
    watch_module.QUEUE_LIMIT = 3  # so a burst of messages overflows the live queue
    try:
        await asyncio.gather(*(send(client, agent_id, task_id, f"burst {i}") for i in range(40)))
        await cancel(client, agent_id, task_id)
        rest = [m async for m in iterator]
    finally:
        watch_module.QUEUE_LIMIT = limit
    assert [m.sequence for m in rest] == [*range(2, 43), 42]


async def test_watch_errors_before_the_first_message_are_statuses(
    client: Api, other_tenant: Api, agent_id: str
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    for api, args, expected in [
        (other_tenant, (agent_id, task_id, 0), (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")),
        (client, ("nope", task_id, 0), (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")),
        (client, (agent_id, task_id, -1), (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(watch(api, *args))  # type: ignore[arg-type]
        assert error_info(caught.value)[:2] == expected


async def test_a_snapshot_of_an_unfinished_task_is_what_get_status_shows(client: Api, agent_id: str) -> None:
    # On one server the snapshot of a task that changed lately comes from memory, not the store:
    # it must be the stored task, field for field, and still answer only its own agent.
    task_id = (await client.submit(agent_id, "same", priority=7, metadata={"k": [1, "v"]})).task_id
    await send(client, agent_id, task_id, "a note")
    stored = await client.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata
    )
    snapshot = await anext(aiter(watch(client, agent_id, task_id)))
    assert snapshot.task == stored.task
    assert snapshot.sequence == stored.task.last_sequence == 2
    other_agent = await client.create_agent("other")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(watch(client, other_agent, task_id))
    assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")


async def test_a_watch_after_its_agent_was_deleted_is_not_found(client: Api, agent_id: str) -> None:
    # The server remembers the task as cancelled by the deletion; the store no longer has it.
    finished = (await client.submit(agent_id)).task_id
    await client.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=finished), metadata=client.metadata)
    unfinished = (await client.submit(agent_id)).task_id
    await client.agents.DeleteAgent(apb.DeleteAgentRequest(agent_id=agent_id), metadata=client.metadata)
    for task_id in (finished, unfinished):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(watch(client, agent_id, task_id))
        assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")


async def test_wildcard_agent_watches_by_task_id_alone(client: Api, agent_id: str) -> None:
    task_id = (await client.submit(agent_id)).task_id
    await cancel(client, agent_id, task_id)
    messages = await collect(watch(client, "-", task_id))
    assert [m.type for m in messages] == ["snapshot", "end"]


async def test_an_event_is_converted_once_for_all_its_watchers() -> None:
    """Every watcher of a task gets the same published event object; its message is built once
    (the fan-out cost per watcher), while an equal but distinct event (read back from the store
    by a watcher catching up) gets its own, and the memo stays bounded."""

    def event(n: int) -> TaskEvent:
        return TaskEvent(
            "t",
            "task",
            n,
            EventType.MESSAGE,
            TaskStatus.RUNNING,
            utcnow(),
            {"message": {"message_id": "m", "text": "hi"}},
        )

    published = event(3)
    first, again = convert.watch_item(published), convert.watch_item(published)
    assert first is again and first.message.text == "hi" and first.sequence == 3
    twin = event(3)
    assert convert.watch_item(twin) is not first and convert.watch_item(twin) == convert.watch_item(twin)
    for n in range(convert._CONVERTED_EVENTS * 2):
        convert.watch_item(event(n))
    assert len(convert._converted) == convert._CONVERTED_EVENTS
    assert convert.watch_item(published) is not first  # evicted long ago, built afresh


async def test_open_watch_streams_are_capped_per_credential(db_path: Path) -> None:
    async with Service(make_settings(db_path, max_watches_per_credential=3)) as service:
        first = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        second = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        try:
            agent_id = await first.create_agent()
            task_id = (await first.submit(agent_id)).task_id
            calls = [watch(first, agent_id, task_id) for _ in range(3)]
            streams = [aiter(call) for call in calls]
            assert [(await anext(s)).type for s in streams] == ["snapshot"] * 3
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anext(aiter(watch(first, agent_id, task_id)))
            assert error_info(caught.value)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHES")
            assert (await anext(aiter(watch(second, agent_id, task_id)))).type == "snapshot"  # its own cap

            calls[0].cancel()  # type: ignore[attr-defined]

            async def reopened() -> str:
                while True:
                    try:
                        return str((await anext(aiter(watch(first, agent_id, task_id)))).type)
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.02)

            assert await asyncio.wait_for(reopened(), 10) == "snapshot"
        finally:
            await first.channel.close()
            await second.channel.close()
