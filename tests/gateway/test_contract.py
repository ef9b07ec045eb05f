"""Every row of the REST contract (DESIGN section 3) through the real Envoy, at the root and under /v1."""

from __future__ import annotations

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.core.dispatch import MAX_OUTPUT_BYTES
from agenttasks.core.ports import WriteTx
from tests.gateway.support import UUID, assert_error, is_time
from tests.support import write_output

pytestmark = pytest.mark.asyncio

SUBMIT_FIELDS = {"task_id", "status", "created_at", "estimated_start", "poll_url", "cancel_url"}
TASK_STATUSES = {"queued", "running", "awaiting_input", "completed", "failed", "cancelled"}


async def submit(rest: httpx.AsyncClient, prefix: str, agent: str, **body: object) -> dict[str, object]:
    response = await rest.post(f"{prefix}/agent/request/{agent}", json={"message": "summarise", **body})
    assert response.status_code == 202, response.text
    answer: dict[str, object] = response.json()
    return answer


async def test_submit_answers_202_with_the_documented_fields(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    response = await rest.post(f"{prefix}/agent/request/{agent}", json={"message": "Summarise the Q3 report"})
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() >= SUBMIT_FIELDS, body
    assert UUID.match(body["task_id"]), body
    assert body["status"] == "queued"
    assert is_time(body["created_at"]) and is_time(body["estimated_start"]), body
    task_path = f"/agent/{agent}/task/{body['task_id']}"
    assert body["poll_url"].endswith(task_path), body
    assert body["cancel_url"].endswith(f"{task_path}/cancel"), body


async def test_submit_keeps_every_optional_field(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    submitted = await submit(
        rest,
        prefix,
        agent,
        priority=8,
        timeout_override=120,
        metadata={"team": "finance", "n": 3, "tags": ["a"]},
        callback_mode="poll",
    )
    task = (await rest.get(f"{prefix}/agent/{agent}/task/{submitted['task_id']}")).json()
    assert (task["priority"], task["timeout_seconds"], task["callback_mode"]) == (8, 120, "poll")
    assert task["metadata"] == {"team": "finance", "n": 3, "tags": ["a"]}


async def test_batch_submit_answers_202_with_one_answer_per_request(
    rest: httpx.AsyncClient, prefix: str, agent: str
) -> None:
    body = {"requests": [{"message": "first"}, {"message": "second", "priority": 9, "metadata": {"n": 1}}]}
    response = await rest.post(f"{prefix}/agent/{agent}/tasks:batchSubmit", json=body)
    assert response.status_code == 202, response.text
    answers = response.json()["responses"]
    assert [a.keys() >= SUBMIT_FIELDS and a["status"] == "queued" for a in answers] == [True, True], answers
    second = (await rest.get(f"{prefix}/agent/{agent}/task/{answers[1]['task_id']}")).json()
    assert (second["message"], second["priority"], second["metadata"]) == ("second", 9, {"n": 1})

    bad = {"requests": [{"message": "fine"}, {"message": "bad", "priority": 11}]}
    response = await rest.post(f"{prefix}/agent/{agent}/tasks:batchSubmit", json=bad)
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="requests[1].priority")
    listed = (await rest.get(f"{prefix}/agent/{agent}/tasks")).json()["tasks"]
    assert len(listed) == 2  # the refused batch left nothing


async def test_get_status_answers_the_task_itself(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    task_id = (await submit(rest, prefix, agent))["task_id"]
    response = await rest.get(f"{prefix}/agent/{agent}/task/{task_id}")
    assert response.status_code == 200, response.text
    task = response.json()
    # response_body: "task" -- the Task's fields at the top level, not {"task": {...}}.
    assert (task["task_id"], task["agent_id"], task["status"]) == (task_id, agent, "queued")
    assert task["status"] in TASK_STATUSES
    assert task["message"] == "summarise"
    assert is_time(task["created_at"]) and is_time(task["updated_at"])
    assert task["last_sequence"] == "1"  # int64 is a JSON string


async def test_a_task_can_be_named_without_its_agent(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    task_id = (await submit(rest, prefix, agent))["task_id"]
    response = await rest.get(f"{prefix}/agent/-/task/{task_id}")
    assert response.status_code == 200, response.text
    assert response.json()["agent_id"] == agent


async def test_send_message_answers_200(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    task_id = (await submit(rest, prefix, agent))["task_id"]
    response = await rest.post(f"{prefix}/agent/{agent}/task/{task_id}/message", json={"message": "focus on revenue"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["task_id"], body["status"]) == (task_id, "queued")
    assert UUID.match(body["message_id"]) and is_time(body["created_at"]), body


async def test_cancel_answers_the_cancelled_task_and_is_idempotent(
    rest: httpx.AsyncClient, prefix: str, agent: str
) -> None:
    task_id = (await submit(rest, prefix, agent))["task_id"]
    first = await rest.post(f"{prefix}/agent/{agent}/task/{task_id}/cancel")
    assert first.status_code == 200, first.text
    assert (first.json()["task_id"], first.json()["status"]) == (task_id, "cancelled")
    again = await rest.post(f"{prefix}/agent/{agent}/task/{task_id}/cancel", json={})
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


async def test_list_tasks_pages_newest_first(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    ids = [(await submit(rest, prefix, agent))["task_id"] for _ in range(3)]
    response = await rest.get(f"{prefix}/agent/{agent}/tasks", params={"page_size": 2})
    assert response.status_code == 200, response.text
    first = response.json()
    assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:2]
    assert first["next_page_token"]
    rest_of = (
        await rest.get(f"{prefix}/agent/{agent}/tasks", params={"page_size": 2, "page_token": first["next_page_token"]})
    ).json()
    assert [t["task_id"] for t in rest_of["tasks"]] == ids[:1]
    assert rest_of["next_page_token"] == ""

    await rest.post(f"{prefix}/agent/{agent}/task/{ids[0]}/cancel")
    cancelled = (await rest.get(f"{prefix}/agent/{agent}/tasks", params={"status": "cancelled"})).json()
    assert [t["task_id"] for t in cancelled["tasks"]] == [ids[0]]


async def test_agent_create_get_update_and_list(rest: httpx.AsyncClient, prefix: str) -> None:
    created = await rest.post(
        f"{prefix}/agent/create",
        json={"name": "summariser", "description": "summarises", "default_timeout_seconds": 60, "metadata": {"k": 1}},
    )
    assert created.status_code == 200, created.text
    agent = created.json()  # response_body: "agent"
    assert UUID.match(agent["agent_id"]) and agent["status"] == "active", agent
    assert (agent["name"], agent["default_timeout_seconds"], agent["metadata"]) == ("summariser", 60, {"k": 1})

    got = await rest.get(f"{prefix}/agent/{agent['agent_id']}")
    assert got.status_code == 200 and got.json() == agent, got.text

    updated = await rest.post(f"{prefix}/agent/update/{agent['agent_id']}", json={"description": "better"})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["name"], updated.json()["description"]) == ("summariser", "better")

    # Not swallowed by GET /agent/{agent_id}: "list" is no agent id.
    listed = await rest.get(f"{prefix}/agent/list")
    assert listed.status_code == 200, listed.text
    assert [a["agent_id"] for a in listed.json()["agents"]] == [agent["agent_id"]]
    assert listed.json()["next_page_token"] == ""


async def test_agent_pause_resume_stop_and_delete(rest: httpx.AsyncClient, prefix: str, agent: str) -> None:
    paused = await rest.post(f"{prefix}/agent/{agent}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    refused = await rest.post(f"{prefix}/agent/request/{agent}", json={"message": "more"})
    assert_error(refused, 503, "AGENT_UNAVAILABLE", "UNAVAILABLE")

    resumed = await rest.post(f"{prefix}/agent/{agent}/resume", json={})
    assert resumed.status_code == 200 and resumed.json()["status"] == "active", resumed.text
    task_id = (await submit(rest, prefix, agent))["task_id"]

    stopped = await rest.post(f"{prefix}/agent/{agent}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
    assert_error(
        await rest.post(f"{prefix}/agent/request/{agent}", json={"message": "x"}),
        503,
        "AGENT_UNAVAILABLE",
        "UNAVAILABLE",
    )

    status = await rest.post(f"{prefix}/agent/{agent}/status", json={"status": "error", "status_message": "offline"})
    assert status.status_code == 200, status.text
    assert (status.json()["status"], status.json()["status_message"]) == ("error", "offline")

    deleted = await rest.post(f"{prefix}/agent/delete/{agent}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"agent_id": agent, "cancelled_tasks": 1}
    assert_error(await rest.get(f"{prefix}/agent/{agent}"), 404, "AGENT_NOT_FOUND", "NOT_FOUND")
    assert_error(await rest.get(f"{prefix}/agent/{agent}/task/{task_id}"), 404, "TASK_NOT_FOUND", "NOT_FOUND")


async def test_big_tasks_come_through_the_gateway_whole(service: Service, rest: httpx.AsyncClient, agent: str) -> None:
    """Tasks of 1.5 MB each: GetStatus answers one whole, ListTasks pages them (Envoy buffers
    a transcoded response until its trailers)."""
    ids = [(await submit(rest, "", agent))["task_id"] for _ in range(3)]

    def fill(tx: WriteTx) -> None:
        for task_id in ids:
            write_output(tx, task_id, "o" * MAX_OUTPUT_BYTES, result="r" * 500_000)

    await service.store.write(fill)
    one = await rest.get(f"/agent/{agent}/task/{ids[0]}")
    assert one.status_code == 200, one.text[:300]
    assert len(one.json()["output"]) == MAX_OUTPUT_BYTES
    seen, token = [], ""
    while True:
        page = await rest.get(f"/agent/{agent}/tasks", params={"page_token": token} if token else {})
        assert page.status_code == 200, page.text[:300]
        body = page.json()
        seen += [t["task_id"] for t in body.get("tasks", [])]
        if not (token := body.get("next_page_token", "")):
            break
    assert seen == ids[::-1]
