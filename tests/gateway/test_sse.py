"""WatchTask over REST: Server-Sent Events through the real Envoy, as they happen, resumable,
ending with an event that says why the stream ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.gateway.support import is_time, sse_events

pytestmark = pytest.mark.asyncio


async def worker_for(service: Service, agent: str) -> RawWorker:
    return await RawWorker(service.address, await create_api_key(service.store, "default", Role.WORKER), agent).start()


async def test_events_stream_as_they_happen_until_the_end_event(
    service: Service, rest: httpx.AsyncClient, agent: str, prefix: str
) -> None:
    task_id = (await rest.post(f"{prefix}/agent/request/{agent}", json={"message": "watch me"})).json()["task_id"]
    worker: RawWorker | None = None
    try:
        async with rest.stream("GET", f"{prefix}/agent/{agent}/task/{task_id}/watch") as response:
            events: AsyncIterator[dict[str, Any]] = sse_events(response)

            snapshot = await anext(events)
            assert (snapshot["type"], snapshot["sequence"], snapshot["status"]) == ("snapshot", "1", "queued")
            assert snapshot["task"]["task_id"] == task_id and snapshot["task"]["message"] == "watch me"
            assert is_time(snapshot["time"])

            # Each step waits for its event before the next one is taken: the stream delivers
            # events while the task runs, not when it ends.
            await rest.post(f"{prefix}/agent/{agent}/task/{task_id}/message", json={"message": "hello"})
            message = await anext(events)
            assert (message["type"], message["message"]["text"]) == ("message", "hello")

            worker = await worker_for(service, agent)
            assignment = await worker.next_assignment()
            running = await anext(events)
            assert (running["type"], running["status"]) == ("status", "running")

            await worker.send(progress=wpb.ReportProgress(task=ref(assignment), percent=50, text="half"))
            progress = await anext(events)
            assert (progress["type"], progress["progress"]) == ("progress", {"percent": 50, "text": "half"})

            await worker.send(output=wpb.AppendOutput(task=ref(assignment), chunk="partial "))
            output = await anext(events)
            assert (output["type"], output["output"]) == ("output", "partial ")

            await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="all done"))
            completed = await anext(events)
            assert (completed["type"], completed["status"]) == ("status", "completed")
            assert completed["result"]["text"] == "all done"

            end = await anext(events)
            assert (end["type"], end["reason"], end["status"]) == ("end", "TASK_FINISHED", "completed")
            assert [e async for e in events] == []  # the stream is over after the end event

        sequences = [int(e["sequence"]) for e in (message, running, progress, output, completed)]
        assert sequences == sorted(sequences) and len(set(sequences)) == 5, sequences
    finally:
        if worker is not None:
            await worker.close()


async def test_resume_after_a_sequence_replays_what_was_missed(rest: httpx.AsyncClient, agent: str) -> None:
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    for text in ("m1", "m2", "m3"):
        await rest.post(f"/agent/{agent}/task/{task_id}/message", json={"message": text})
    await rest.post(f"/agent/{agent}/task/{task_id}/cancel")  # sequences: 1 created, 2-4 messages, 5 cancelled

    async with rest.stream("GET", f"/agent/{agent}/task/{task_id}/watch", params={"after_sequence": 2}) as response:
        events = [e async for e in sse_events(response)]
    assert [(e["type"], e["sequence"]) for e in events] == [
        ("snapshot", "5"),
        ("message", "3"),
        ("message", "4"),
        ("status", "5"),
        ("end", "5"),
    ]
    assert [e["message"]["text"] for e in events[1:3]] == ["m2", "m3"]
    assert (events[-1]["reason"], events[-1]["status"]) == ("TASK_FINISHED", "cancelled")

    async with rest.stream("GET", f"/v1/agent/{agent}/task/{task_id}/watch") as response:
        assert [e["type"] async for e in sse_events(response)] == ["snapshot", "end"]


async def test_a_server_shutdown_ends_the_stream_with_a_resumable_end_event(
    service: Service, rest: httpx.AsyncClient, agent: str
) -> None:
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    async with rest.stream("GET", f"/agent/{agent}/task/{task_id}/watch") as response:
        events = sse_events(response)
        snapshot = await anext(events)
        await service.stop()
        rest_of = [e async for e in events]
    assert [e["type"] for e in rest_of] == ["end"], rest_of
    assert (rest_of[0]["reason"], rest_of[0]["status"]) == ("SERVER_SHUTDOWN", "queued")
    assert rest_of[0]["sequence"] == snapshot["sequence"]  # resume from here with after_sequence


async def test_a_bad_after_sequence_is_a_json_400_not_a_stream(rest: httpx.AsyncClient, agent: str) -> None:
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    response = await rest.get(f"/agent/{agent}/task/{task_id}/watch", params={"after_sequence": "soon"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "after_sequence" in response.json()["message"]
