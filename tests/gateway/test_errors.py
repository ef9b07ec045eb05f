"""Errors through the real Envoy: the server's statuses keep their code and rich body, and the
errors Envoy makes itself come out in the same JSON shape, never empty or plain text."""

from __future__ import annotations

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.gateway import Gateway
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.gateway.support import assert_error, http_client

pytestmark = pytest.mark.asyncio

MISSING = "01a22373-0000-7000-8000-000000000000"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x", "priority": 11}, "priority"),
        ({"message": "x", "timeout_override": 0}, "timeout_override"),
        ({"message": "x", "callback_mode": "webhook"}, "webhook_url"),
        ({"message": "x", "callback_mode": "carrier-pigeon"}, "callback_mode"),
    ],
)
async def test_an_invalid_submit_is_400_naming_the_field(
    rest: httpx.AsyncClient, agent: str, body: dict[str, object], field: str
) -> None:
    response = await rest.post(f"/agent/request/{agent}", json=body)
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field=field)


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer atk_0000000000000000_nope"}, {"authorization": "Basic abc"}, {"x-api-key": "x"}],
    ids=["missing", "unknown-key", "not-bearer", "malformed-key"],
)
async def test_bad_credentials_are_401(gateway: Gateway, agent: str, headers: dict[str, str]) -> None:
    async with http_client(gateway, headers) as client:
        assert_error(await client.get("/agent/list"), 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
        response = await client.post(f"/agent/request/{agent}", json={"message": "x"})
        assert_error(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")


async def test_a_worker_key_may_not_submit_403(gateway: Gateway, service: Service, agent: str) -> None:
    worker_key = await create_api_key(service.store, "default", Role.WORKER)
    async with http_client(gateway, {"authorization": f"Bearer {worker_key}"}) as worker:
        response = await worker.post(f"/agent/request/{agent}", json={"message": "x"})
    assert response.status_code == 403, response.text
    assert response.json()["details"][0]["reason"] == "PERMISSION_DENIED"


async def test_unknown_agents_and_tasks_are_404(rest: httpx.AsyncClient, agent: str) -> None:
    submitted = await rest.post(f"/agent/request/{MISSING}", json={"message": "x"})
    assert_error(submitted, 404, "AGENT_NOT_FOUND", "NOT_FOUND")
    assert_error(await rest.get(f"/agent/{MISSING}"), 404, "AGENT_NOT_FOUND", "NOT_FOUND")
    for path in (f"/agent/{agent}/task/{MISSING}", f"/agent/{agent}/task/{MISSING}/watch"):
        assert_error(await rest.get(path), 404, "TASK_NOT_FOUND", "NOT_FOUND")
    for path in (f"/agent/{agent}/task/{MISSING}/cancel", f"/agent/{agent}/task/{MISSING}/message"):
        assert_error(await rest.post(path, json={"message": "x"}), 404, "TASK_NOT_FOUND", "NOT_FOUND")


async def test_another_tenants_task_is_404(
    gateway: Gateway, service: Service, rest: httpx.AsyncClient, agent: str
) -> None:
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "mine"})).json()["task_id"]
    other_key = await create_api_key(service.store, "other", Role.CLIENT)
    async with http_client(gateway, {"x-api-key": other_key}) as other:
        assert_error(await other.get(f"/agent/{agent}/task/{task_id}"), 404, "TASK_NOT_FOUND", "NOT_FOUND")


async def test_finished_tasks_refuse_cancel_and_messages_with_400(
    service: Service, rest: httpx.AsyncClient, agent: str
) -> None:
    completed = (await rest.post(f"/agent/request/{agent}", json={"message": "a", "priority": 9})).json()["task_id"]
    failed = (await rest.post(f"/agent/request/{agent}", json={"message": "b"})).json()["task_id"]
    worker_key = await create_api_key(service.store, "default", Role.WORKER)
    worker = await RawWorker(service.address, worker_key, agent).start()
    try:
        first = await worker.next_assignment()
        assert first.task.task_id == completed
        assert (await worker.send(complete=wpb.CompleteTask(task=ref(first), text="done"))).code == 0
        second = await worker.next_assignment()
        assert (await worker.send(fail=wpb.FailTask(task=ref(second), code="BROKE", message="no"))).code == 0
    finally:
        await worker.close()

    for task_id, status in ((completed, "completed"), (failed, "failed")):
        assert (await rest.get(f"/agent/{agent}/task/{task_id}")).json()["status"] == status
        cancel = await rest.post(f"/agent/{agent}/task/{task_id}/cancel")
        assert_error(cancel, 400, "TASK_ALREADY_FINISHED", "FAILED_PRECONDITION")
        message = await rest.post(f"/agent/{agent}/task/{task_id}/message", json={"message": "late"})
        assert_error(message, 400, "TASK_ALREADY_FINISHED", "FAILED_PRECONDITION")


async def test_a_reused_idempotency_key_is_409_and_a_retry_gets_the_original(
    rest: httpx.AsyncClient, agent: str
) -> None:
    body = {"message": "once", "request_id": "req-1"}
    first = await rest.post(f"/agent/request/{agent}", json=body)
    retry = await rest.post(f"/agent/request/{agent}", json=body)
    assert (first.status_code, retry.status_code) == (202, 202)
    assert retry.json()["task_id"] == first.json()["task_id"]
    header = {"idempotency-key": "req-1"}
    by_header = await rest.post(f"/agent/request/{agent}", json={"message": "once"}, headers=header)
    assert by_header.json()["task_id"] == first.json()["task_id"]
    clash = await rest.post(f"/agent/request/{agent}", json={"message": "twice", "request_id": "req-1"})
    assert_error(clash, 409, "IDEMPOTENCY_KEY_REUSED", "ALREADY_EXISTS")


# --- errors Envoy makes itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"message":', "Unexpected end"),
        (b"not json", "Unexpected token"),
        (b"[]", "Root element must be a message"),
        (b'{"message": "x", "priority": "high"}', "priority"),
        (b'{"message": "x", "priority": 1.5}', "priority"),
        (b'{"message": "x", "metadata": [1]}', "not repeating"),
    ],
    ids=["truncated", "not-json", "array", "string-for-int", "float-for-int", "list-for-object"],
)
async def test_a_body_envoy_cannot_transcode_is_a_json_400(
    rest: httpx.AsyncClient, agent: str, content: bytes, words: str
) -> None:
    response = await rest.post(f"/agent/request/{agent}", content=content, headers={"content-type": "application/json"})
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert words in body["message"], body


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("/agent/list", {"bogus": "1"}, '"bogus"'),
        ("/agent/list", {"page_size": "many"}, "page_size"),
        ("/agent/{agent}/tasks", {"page_sise": "1"}, '"page_sise"'),
    ],
)
async def test_a_query_envoy_cannot_transcode_is_a_json_400(
    rest: httpx.AsyncClient, agent: str, path: str, params: dict[str, str], words: str
) -> None:
    response = await rest.get(path.format(agent=agent), params=params)
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert words in body["message"], body


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/v2/agent/list"), ("DELETE", "/agent/list"), ("POST", "/agent/list"), ("PUT", "/")],
)
async def test_an_unknown_path_or_method_is_a_json_404(rest: httpx.AsyncClient, method: str, path: str) -> None:
    response = await rest.request(method, path)
    body = assert_error(response, 404, "PATH_NOT_FOUND", "NOT_FOUND")
    assert path in body["message"], body


async def test_the_server_down_behind_envoy_is_a_json_503(service: Service, rest: httpx.AsyncClient) -> None:
    assert (await rest.get("/agent/list")).status_code == 200
    await service.stop()
    for _ in range(2):  # a fresh connection attempt each time, not a cached failure
        response = await rest.get("/agent/list")
        body = assert_error(response, 503, "UPSTREAM_UNAVAILABLE", "UNAVAILABLE")
        assert "connect" in body["message"], body


# --- a path id cannot be overridden ----------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["agent_id={other}", "agentId={other}", "task_id={other}", "taskId={other}", "agent_id", "x=1&agent_id={other}"],
)
async def test_a_query_parameter_cannot_set_a_path_id(rest: httpx.AsyncClient, agent: str, query: str) -> None:
    other = (await rest.post("/agent/create", json={"name": "other"})).json()["agent_id"]
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    query = query.format(other=other)
    for method, path in [
        ("GET", f"/agent/{agent}"),
        ("GET", f"/agent/{agent}/task/{task_id}"),
        ("GET", f"/agent/{agent}/task/{task_id}/watch"),
        ("GET", f"/v1/agent/{agent}/tasks"),
        ("POST", f"/agent/{agent}/task/{task_id}/cancel"),
        ("POST", f"/agent/request/{agent}"),
        ("POST", f"/agent/{agent}/pause"),
        ("POST", f"/agent/delete/{agent}"),
    ]:
        response = await rest.request(method, f"{path}?{query}", json={"message": "x"} if method == "POST" else None)
        body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert "come from the path" in body["message"], body
    # None of those reached the server: the task is still queued, the agents untouched.
    assert (await rest.get(f"/agent/{agent}/task/{task_id}")).json()["status"] == "queued"
    assert {a["status"] for a in (await rest.get("/agent/list")).json()["agents"]} == {"active"}
    assert len((await rest.get(f"/agent/{agent}/tasks")).json()["tasks"]) == 1


@pytest.mark.parametrize("name", ["agent%5Fid", "%61gent_id", "task%5fid", "page%5Fsize"])
async def test_a_percent_encoded_query_name_is_refused(rest: httpx.AsyncClient, agent: str, name: str) -> None:
    # The transcoder decodes names (agent%5Fid would set agent_id); Envoy's matchers do not.
    response = await rest.get(f"/agent/{agent}/tasks?{name}=1")
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "percent-encoded" in body["message"], body


async def test_a_body_field_cannot_set_a_path_id(rest: httpx.AsyncClient, agent: str) -> None:
    other = (await rest.post("/agent/create", json={"name": "other"})).json()["agent_id"]
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    clash = await rest.post(f"/agent/{agent}/task/{task_id}/message", json={"message": "m", "agent_id": other})
    body = assert_error(clash, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "agent_id" in body["message"], body
    submit = await rest.post(f"/agent/request/{agent}", json={"message": "m", "agent_id": other})
    assert_error(submit, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    # A JSON-name spelling is not a collision the transcoder detects, but the path still wins.
    sent = await rest.post(f"/agent/request/{agent}", json={"message": "m", "agentId": other})
    assert sent.status_code == 202 and sent.json()["agent_id"] == agent, sent.text
    assert (await rest.get(f"/agent/{other}/tasks")).json()["tasks"] == []


async def test_a_body_too_large_for_the_server_is_still_json(rest: httpx.AsyncClient, agent: str) -> None:
    # Up to the server's 8 MiB message limit, an oversized field is a 400 that names it.
    response = await rest.post(f"/agent/request/{agent}", json={"message": "x" * (5 * 1024 * 1024)})
    assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "message" in response.json()["message"]
    # Past it, the server's gRPC core refuses the call before any handler: no ErrorInfo, but a
    # JSON status all the same (docs/gateway.md says so).
    response = await rest.post(f"/agent/request/{agent}", json={"message": "x" * (9 * 1024 * 1024)})
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == 8 and "larger than max" in response.json()["message"]
