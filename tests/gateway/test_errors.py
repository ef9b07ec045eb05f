"""Errors through the real Envoy: the server's statuses keep their code and rich body, and the
errors Envoy makes itself come out in the same JSON shape, never empty or plain text."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.gateway import Gateway
from agenttasks.gateway.config import template_text
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.gateway.support import BAD_REQUEST, assert_error, http_client

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
    cancelled = await rest.post(f"/agent/{agent}/task/{MISSING}/cancel")
    assert_error(cancelled, 404, "TASK_NOT_FOUND", "NOT_FOUND")
    sent = await rest.post(f"/agent/{agent}/task/{MISSING}/message", json={"message": "x"})
    assert_error(sent, 404, "TASK_NOT_FOUND", "NOT_FOUND")


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
    ("content", "message"),
    [
        (b'{"message":', "request body is not valid JSON: unexpected end of string, expected a value"),
        (b"not json", "request body is not valid JSON: unexpected token"),
        (b'{"message": "x"} and more', "request body is not valid JSON: parsing terminated before end of input"),
        (b'{"message": "x" "priority": 1}', "request body is not valid JSON: expected , or } after key:value pair"),
        (b"[]", "request body must be a JSON object"),
        (b'{"message": "x", "priority": "high"}', 'priority must be an integer from 1 to 10, got "high"'),
        (b'{"message": "x", "priority": 1.5}', "priority must be an integer from 1 to 10, got 1.5"),
        (
            b'{"message": "x", "timeout_override": true}',
            "timeout_override must be a whole number of seconds, at least 1, got true",
        ),
        (b'{"message": 7}', "message must be a string, got 7"),
        (b'{"message": "x", "metadata": "team"}', 'metadata must be a JSON object, got "team"'),
        (b'{"message": "x", "metadata": [1]}', "request body has a JSON list in a field that takes no list"),
        (b'{"message": {"text": "x"}}', "request body has a JSON object in a field that takes a plain value"),
    ],
    ids=[
        "truncated",
        "not-json",
        "trailing-text",
        "missing-comma",
        "array",
        "string-for-int",
        "float-for-int",
        "bool-for-int",
        "int-for-string",
        "string-for-object",
        "list-for-object",
        "object-for-string",
    ],
)
async def test_a_body_envoy_cannot_transcode_is_a_json_400_in_plain_words(
    rest: httpx.AsyncClient, agent: str, content: bytes, message: str
) -> None:
    response = await rest.post(f"/agent/request/{agent}", content=content, headers={"content-type": "application/json"})
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    # One line, the project's words: none of the transcoder's type names or caret drawings.
    assert body["message"] == message, body


async def test_a_batch_item_of_the_wrong_type_is_named_by_its_index(rest: httpx.AsyncClient, agent: str) -> None:
    body = {"requests": [{"message": "a"}, {"message": "b", "priority": "urgent"}]}
    response = await rest.post(f"/agent/{agent}/tasks:batchSubmit", json=body)
    error = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert error["message"] == 'requests[1].priority must be an integer from 1 to 10, got "urgent"', error


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/agent/list", {"bogus": "1"}, 'unknown query parameter "bogus"'),
        ("/agent/list", {"page_size": "many"}, 'page_size must be a whole number, got "many"'),
        ("/agent/{agent}/tasks", {"page_sise": "1"}, 'unknown query parameter "page_sise"'),
        ("/agent/{agent}/tasks", {"after_sequence": "1"}, 'unknown query parameter "after_sequence"'),
    ],
)
async def test_a_query_envoy_cannot_transcode_is_a_json_400_in_plain_words(
    rest: httpx.AsyncClient, agent: str, path: str, params: dict[str, str], message: str
) -> None:
    response = await rest.get(path.format(agent=agent), params=params)
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert body["message"] == message, body


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/v2/agent/list"), ("PUT", "/"), ("DELETE", "/agent/x/task/y/z"), ("POST", "/")],
)
async def test_an_unknown_path_is_a_json_404(rest: httpx.AsyncClient, method: str, path: str) -> None:
    response = await rest.request(method, path, params={"page_size": "1"})
    body = assert_error(response, 404, "PATH_NOT_FOUND", "NOT_FOUND")
    assert body["message"] == f"no such path: {method} {path}", body
    assert "allow" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/agent/list", "GET"),
        ("POST", "/agent/list", "GET"),
        ("GET", "/agent/request/a1", "POST"),
        ("PUT", "/v1/agent/create", "GET, POST"),  # GET /agent/{agent_id} binds "create" too
        ("DELETE", "/agent/a1", "GET"),
        ("PATCH", "/agent/a1/task/t1", "GET"),
        ("GET", "/agent/a1/task/t1/cancel", "POST"),
        ("POST", "/agent/a1/task/t1/watch", "GET"),
        ("GET", "/agent/a1/tasks:batchSubmit", "POST"),
        ("DELETE", "/agent/a1/pause", "POST"),
    ],
)
async def test_a_known_path_with_a_method_it_does_not_take_is_a_405_naming_those_it_does(
    rest: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await rest.request(method, path, params={"page_size": "1"})
    body = assert_error(response, 405, "METHOD_NOT_ALLOWED", "UNIMPLEMENTED")
    assert response.headers["allow"] == allow
    assert body["message"] == f"{method} is not allowed on {path}; it takes {allow}", body
    assert body["details"][0]["metadata"] == {"allow": allow}


# --- unknown body fields ------------------------------------------------------------------------


async def test_an_unknown_body_field_is_a_400_naming_it_and_queues_nothing(rest: httpx.AsyncClient, agent: str) -> None:
    # The transcoder alone would drop "priorty" and queue the task at priority 5.
    response = await rest.post(f"/agent/request/{agent}", json={"message": "x", "priorty": 9})
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="priorty")
    assert body["message"].startswith("invalid request: priorty: unknown field; the body takes message, priority"), body
    assert "agent_id" not in body["message"]  # it comes from the path, never the body
    assert (await rest.get(f"/agent/{agent}/tasks")).json()["tasks"] == []


async def test_unknown_fields_are_refused_in_every_body(rest: httpx.AsyncClient, agent: str) -> None:
    created = await rest.post("/agent/create", json={"name": "a", "descripton": "typo"})
    assert_error(created, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="descripton")
    task_id = (await rest.post(f"/agent/request/{agent}", json={"message": "x"})).json()["task_id"]
    sent = await rest.post(f"/agent/{agent}/task/{task_id}/message", json={"message": "m", "text": "m"})
    assert_error(sent, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="text")
    cancelled = await rest.post(f"/agent/{agent}/task/{task_id}/cancel", json={"reason": "no longer needed"})
    assert_error(cancelled, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="reason")
    assert (await rest.get(f"/agent/{agent}/task/{task_id}")).json()["status"] == "queued"


async def test_an_unknown_field_in_a_batch_item_is_named_by_its_index(rest: httpx.AsyncClient, agent: str) -> None:
    requests = [{"message": "a"}, {"message": "b"}, {"message": "c", "prio": 2}, {"message": "d", "prio": 3}]
    response = await rest.post(f"/agent/{agent}/tasks:batchSubmit", json={"requests": requests})
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="requests[2].prio")
    assert "each of requests takes message, priority" in body["message"], body
    assert (await rest.get(f"/agent/{agent}/tasks")).json()["tasks"] == []  # all or none


async def test_known_fields_in_either_spelling_and_free_form_metadata_pass(rest: httpx.AsyncClient, agent: str) -> None:
    body = {
        "message": "x",
        "priority": 7,
        "timeoutOverride": 60,
        "requestId": "spelled-in-json",
        "metadata": {"anything": {"goes": ["here", {"nested": 1}]}, "priorty": 1},
    }
    response = await rest.post(f"/agent/request/{agent}", json=body)
    assert response.status_code == 202, response.text
    task = (await rest.get(f"/agent/{agent}/task/{response.json()['task_id']}")).json()
    assert (task["priority"], task["timeout_seconds"], task["metadata"]["priorty"]) == (7, 60, 1)
    batch = {"requests": [{"message": "a", "requestId": "b1", "metadata": {"k": 1}}, {"message": "b"}]}
    assert (await rest.post(f"/agent/{agent}/tasks:batchSubmit", json=batch)).status_code == 202


async def test_a_client_cannot_speak_for_the_gateway_about_body_fields(rest: httpx.AsyncClient, agent: str) -> None:
    # The header the gateway sets is replaced, so a client can neither hide a field nor invent one.
    invented = await rest.post(
        f"/agent/request/{agent}", json={"message": "x"}, headers={"x-agenttasks-body-fields": "bogus"}
    )
    assert invented.status_code == 202, invented.text
    hidden = await rest.post(
        f"/agent/request/{agent}", json={"message": "x", "bogus": 1}, headers={"x-agenttasks-body-fields": "message"}
    )
    assert_error(hidden, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="bogus")


async def test_body_field_names_are_read_as_json_reads_them(rest: httpx.AsyncClient, agent: str) -> None:
    # "\u0070riority" is "priority" to any JSON reader, the transcoder included.
    content = b'{"message": "x", "\\u0070riority": 9}'
    response = await rest.post(f"/agent/request/{agent}", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text
    task = (await rest.get(f"/agent/{agent}/task/{response.json()['task_id']}")).json()
    assert task["priority"] == 9
    # And an escaped path field is still a path field.
    other = (await rest.post("/agent/create", json={"name": "other"})).json()["agent_id"]
    content = b'{"message": "x", "\\u0061gent_id": "' + other.encode() + b'"}'
    response = await rest.post(f"/agent/request/{agent}", content=content, headers={"content-type": "application/json"})
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert body["message"] == "agent_id comes from the path; the body may not set it", body
    assert (await rest.get(f"/agent/{other}/tasks")).json()["tasks"] == []


# --- what Envoy's own answers look like ------------------------------------------------------


async def test_rest_answers_carry_no_grpc_headers(rest: httpx.AsyncClient, agent: str) -> None:
    submitted = await rest.post(f"/agent/request/{agent}", json={"message": "x"})
    task_id = submitted.json()["task_id"]
    answers = [
        submitted,
        await rest.get(f"/agent/{agent}/task/{task_id}"),
        await rest.get("/agent/list"),
        await rest.post(f"/agent/{agent}/task/{MISSING}/cancel"),  # an error from the server
        await rest.get("/nope"),  # an error from Envoy
    ]
    await rest.post(f"/agent/{agent}/task/{task_id}/cancel")
    async with rest.stream("GET", f"/agent/{agent}/task/{task_id}/watch") as stream:
        answers.append(stream)
        await stream.aread()
    assert [a.status_code for a in answers] == [202, 200, 200, 404, 404, 200]
    for answer in answers:
        assert not [h for h in answer.headers if h.startswith("grpc-")], (answer.request.url, answer.headers)


async def test_the_server_down_behind_envoy_is_a_json_503(service: Service, rest: httpx.AsyncClient) -> None:
    assert (await rest.get("/agent/list")).status_code == 200
    await service.stop()
    for _ in range(2):  # a fresh connection attempt each time, not a cached failure
        response = await rest.get("/agent/list")
        body = assert_error(response, 503, "UPSTREAM_UNAVAILABLE", "UNAVAILABLE")
        assert body["message"].startswith("cannot reach the agenttasks server behind the gateway ("), body
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
    assert body["message"] == "agent_id comes from the path; the body may not set it", body
    submit = await rest.post(f"/agent/request/{agent}", json={"message": "m", "agent_id": other})
    assert_error(submit, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    # The transcoder does not see the JSON-name spelling as a collision; the server does.
    sent = await rest.post(f"/agent/request/{agent}", json={"message": "m", "agentId": other})
    body = assert_error(sent, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="agentId")
    assert body["message"] == "invalid request: agentId: comes from the path; the body may not set it", body
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
    # Past what the gateway buffers (it reads each body whole to pass its field names on), the
    # gateway itself refuses, in the same shape.
    response = await rest.post(f"/agent/request/{agent}", json={"message": "x" * (11 * 1024 * 1024)})
    body = assert_error(response, 413, "BAD_REQUEST", "INVALID_ARGUMENT")
    assert body["message"] == "request body is larger than the gateway accepts (10 MiB)", body


# rest.lua words a wrongly typed field by what the server accepts: "priority must be an integer
# from 1 to 10". Each such range must be the server's own, edges included.
EXPECTED_ENTRY = re.compile(
    r'^  (\w+) = "(an integer from (\d+) to (\d+)|a whole number of seconds, at least (\d+))",$'
)
RANGE_FIELDS = {
    "priority": "submit",
    "timeout_override": "submit",
    "max_attempts": "agent",
    "default_timeout_seconds": "agent",
    "input_timeout_seconds": "agent",
}


def _ranges_in_lua() -> dict[str, tuple[int, int | None]]:
    found: dict[str, tuple[int, int | None]] = {}
    for line in template_text("rest.lua").splitlines():
        if match := EXPECTED_ENTRY.match(line):
            name, _, low, high, least = match.groups()
            found[name] = (int(low), int(high)) if low else (int(least), None)
    return found


async def test_the_gateways_ranges_name_every_ranged_field() -> None:
    assert set(_ranges_in_lua()) == set(RANGE_FIELDS)


@pytest.mark.parametrize("field", sorted(RANGE_FIELDS))
async def test_the_gateways_ranges_are_the_servers(rest: httpx.AsyncClient, agent: str, field: str) -> None:
    low, high = _ranges_in_lua()[field]

    async def accepted(value: int) -> bool:
        if RANGE_FIELDS[field] == "submit":
            response = await rest.post(f"/agent/request/{agent}", json={"message": "x", field: value})
        else:
            response = await rest.post("/agent/create", json={"name": "ranged", field: value})
        assert response.status_code in (200, 202, 400), response.text
        return response.status_code != 400

    assert await accepted(low) and not await accepted(low - 1)
    if high is not None:
        assert await accepted(high) and not await accepted(high + 1)


async def test_a_path_that_is_not_utf8_is_400_not_500(
    anonymous: httpx.AsyncClient, rest: httpx.AsyncClient, agent: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Envoy passes `%ff` on as a string field holding a byte that is not UTF-8, which grpcio
    cannot decode: the answer is the project's 400, with or without credentials, and no traceback."""
    caplog.set_level(logging.WARNING)
    for client in (anonymous, rest):
        response = await client.get(f"/agent/{agent}/task/%ff")
        body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="request")
        assert body["message"].startswith("invalid request: could not be decoded"), body  # no "request: " twice
        assert violations(body) == [("request", "UNDECODABLE")], body
        response = await client.post(f"/agent/{agent}/task/%C3%28/cancel")
        assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="request")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def violations(body: dict[str, Any]) -> list[tuple[str, str]]:
    found = [d for d in body["details"] if d["@type"] == BAD_REQUEST]
    return [(v["field"], v["reason"]) for d in found for v in d["field_violations"]]


async def test_every_field_violation_has_a_stable_reason(rest: httpx.AsyncClient, agent: str) -> None:
    bad = {"message": " ", "priority": 11, "request_id": "a b", "metadata": {"n": 1}, "priorty": 9}
    response = await rest.post(f"/agent/request/{agent}", json=bad)
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="priorty")
    assert violations(body) == [("priorty", "UNKNOWN_FIELD")], body  # unknown fields are refused first
    del bad["priorty"]
    response = await rest.post(f"/agent/request/{agent}", json=bad)
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert violations(body) == [("message", "REQUIRED"), ("priority", "OUT_OF_RANGE"), ("request_id", "BAD_FORMAT")]
    response = await rest.get(f"/agent/{agent}/task/42")
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", field="task_id")
    assert violations(body) == [("task_id", "NOT_A_UUID")], body


async def test_headers_grpc_cannot_carry_are_dropped_not_a_500(rest: httpx.AsyncClient, agent: str) -> None:
    """HTTP allows header names like `h~|` and values with bytes past ASCII; gRPC metadata does not,
    and the server's gRPC library failed the whole call on them (INTERNAL, 500). The gateway drops
    them; the call is served, its credential (a legal header) still counts."""
    odd: list[tuple[str, bytes]] = [("h~|", b"1"), ("x-note", "café".encode()), ("x-tab", b"a\tb")]
    for name, value in odd:
        response = await rest.get(f"/agent/{agent}", headers={name: value})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["agent_id"] == agent


async def test_big_headers_are_served_up_to_the_gateways_limit_and_431_past_it(
    rest: httpx.AsyncClient,
) -> None:
    """A 40 KB header (past grpcio's 16 KB default for metadata) is served; past the gateway's
    limit (60 KB) the answer is 431 with the error shape, never a 429 or a bare body."""
    response = await rest.get("/agent/list", headers={"x-trace-note": "a" * 40_000})
    assert response.status_code == 200, response.text
    response = await rest.get("/agent/list", headers={"x-trace-note": "a" * 100_000})
    assert_error(response, 431, "BAD_REQUEST", "INVALID_ARGUMENT")


async def test_a_body_field_with_an_empty_name_is_named_plainly(rest: httpx.AsyncClient, agent: str) -> None:
    response = await rest.post(f"/agent/request/{agent}", content=b'{"": 1, "message": "x"}')
    body = assert_error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert body["message"] == "request body has a field with an empty name"
