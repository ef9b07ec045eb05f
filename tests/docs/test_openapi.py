"""docs/openapi.json is current with the protos, is valid OpenAPI, and documents the fixed REST
contract (DESIGN section 3): every path, under `/v1` too, with its documented success status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from agenttasks.core.validation import Limits

ROOT = Path(__file__).resolve().parent.parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"

# The contract table, as DESIGN section 3 fixes it: (RPC or None, method, path, success status).
# Placeholder names do not matter (the design writes the agent's id as {id}).
TASK_CONTRACT = [
    ("TaskService/Submit", "post", "/agent/request/{agent_id}", "202"),
    ("TaskService/GetStatus", "get", "/agent/{agent_id}/task/{task_id}", "200"),
    ("TaskService/SendMessage", "post", "/agent/{agent_id}/task/{task_id}/message", "200"),
    ("TaskService/Cancel", "post", "/agent/{agent_id}/task/{task_id}/cancel", "200"),
    ("TaskService/WatchTask", "get", "/agent/{agent_id}/task/{task_id}/watch", "200"),
    ("TaskService/ListTasks", "get", "/agent/{agent_id}/tasks", "200"),
]
AGENT_CONTRACT = [
    (None, "post", "/agent/create", "200"),
    (None, "get", "/agent/list", "200"),
    (None, "get", "/agent/{id}", "200"),
    (None, "post", "/agent/update/{id}", "200"),
    (None, "post", "/agent/delete/{id}", "200"),
    (None, "post", "/agent/{id}/pause", "200"),
    (None, "post", "/agent/{id}/resume", "200"),
    (None, "post", "/agent/{id}/stop", "200"),
]
CONTRACT = TASK_CONTRACT + AGENT_CONTRACT


def load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DOCUMENT.read_text())
    return document


def shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    by_shape = {shape(p): item for p, item in document["paths"].items()}
    assert shape(path) in by_shape, f"{method.upper()} {path} is not documented"
    item = by_shape[shape(path)]
    assert method in item, f"{method.upper()} {path} is not documented (only {sorted(item)})"
    found: dict[str, Any] = item[method]
    return found


def test_document_is_current_with_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_openapi.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_document_is_valid_openapi() -> None:
    validate(load())


@pytest.mark.parametrize("prefix", ["", "/v1"])
@pytest.mark.parametrize(("rpc", "method", "path", "status"), CONTRACT, ids=[f"{m} {p}" for _, m, p, _ in CONTRACT])
def test_every_contract_path_is_documented_with_its_success_status(
    prefix: str, rpc: str | None, method: str, path: str, status: str
) -> None:
    found = operation(load(), method, prefix + path)
    successes = [code for code in found["responses"] if code.startswith("2")]
    assert successes == [status]
    if rpc is not None:
        assert f"gRPC: `/agenttasks.v1.{rpc}`." in found["description"]


def test_watch_is_a_server_sent_event_stream_of_watch_task_responses() -> None:
    found = operation(load(), "get", "/agent/{agent_id}/task/{task_id}/watch")
    media = found["responses"]["200"]["content"]
    assert list(media) == ["text/event-stream"]
    assert "WatchTaskResponse" in found["responses"]["200"]["description"]
    assert media["text/event-stream"]["x-sse-data-schema"] == {"$ref": "#/components/schemas/WatchTaskResponse"}
    assert [p["name"] for p in found["parameters"] if p["in"] == "query"] == ["after_sequence"]


def test_submit_documents_its_body_answer_and_errors() -> None:
    document = load()
    found = operation(document, "post", "/agent/request/{agent_id}")
    body = found["requestBody"]["content"]["application/json"]["schema"]
    assert found["requestBody"]["required"] is True
    assert body["required"] == ["message"]
    assert "agent_id" not in body["properties"]  # the path carries it
    assert {"message", "priority", "timeout_override", "metadata", "callback_mode", "webhook_url"} <= set(
        body["properties"]
    )
    assert body["properties"]["metadata"]["type"] == "object"
    answer = found["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = document["components"]["schemas"][answer]["properties"]
    assert {"task_id", "status", "created_at", "estimated_start", "poll_url", "cancel_url"} <= set(fields)
    assert {"400", "401", "404", "503"} <= set(found["responses"])
    status = document["components"]["schemas"]["google.rpc.Status"]
    assert set(status["properties"]) == {"code", "message", "details"}
    assert "@type" in document["components"]["schemas"]["google.protobuf.Any"]["required"]


def test_schemas_follow_the_transcoders_json() -> None:
    schemas = load()["components"]["schemas"]
    task = schemas["Task"]["properties"]
    assert task["last_sequence"]["type"] == "string" and task["last_sequence"]["format"] == "int64"
    assert task["created_at"]["format"] == "date-time"
    assert task["metadata"] == {"type": "object", "additionalProperties": True}
    assert task["task_id"]["readOnly"] is True and "readOnly" not in task["message"]
    assert task["progress"]["allOf"] == [{"$ref": "#/components/schemas/Progress"}]
    assert schemas["ListTasksResponse"]["properties"]["tasks"]["items"] == {"$ref": "#/components/schemas/Task"}
    assert schemas["CreateAgentRequest"]["required"] == ["name"]


def test_response_body_is_honoured_and_auth_applies_everywhere() -> None:
    document = load()
    get_status = operation(document, "get", "/agent/{agent_id}/task/{task_id}")
    schema = get_status["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Task"}  # response_body: "task"
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "x-api-key"}
    assert document["security"] == [{"bearerAuth": []}, {"apiKey": []}]
    overriding = [op["operationId"] for item in document["paths"].values() for op in item.values() if "security" in op]
    assert overriding == []


# Where the document must declare a field rule (agenttasks.core.field_rules): (method, path,
# where the field is, field, rule). The rule's keywords must be in the field's schema as they are.
DECLARED = [
    ("post", "/agent/request/{agent_id}", "path", "agent_id", "agent_id"),
    ("post", "/agent/request/{agent_id}", "body", "message", "message"),
    ("post", "/agent/request/{agent_id}", "body", "priority", "priority"),
    ("post", "/agent/request/{agent_id}", "body", "timeout_override", "timeout_override"),
    ("post", "/agent/request/{agent_id}", "body", "callback_mode", "callback_mode"),
    ("post", "/agent/request/{agent_id}", "body", "webhook_url", "webhook_url"),
    ("post", "/agent/request/{agent_id}", "body", "request_id", "request_id"),
    ("post", "/agent/{agent_id}/tasks:batchSubmit", "body", "requests", "requests"),
    ("get", "/agent/{agent_id}/task/{task_id}", "path", "agent_id", "task_agent_id"),
    ("get", "/agent/{agent_id}/task/{task_id}", "path", "task_id", "task_id"),
    ("post", "/agent/{agent_id}/task/{task_id}/message", "body", "message", "message"),
    ("get", "/agent/{agent_id}/task/{task_id}/watch", "query", "after_sequence", "after_sequence"),
    ("get", "/agent/{agent_id}/tasks", "query", "status", "task_status"),
    ("get", "/agent/{agent_id}/tasks", "query", "page_size", "page_size"),
    ("post", "/agent/create", "body", "name", "name"),
    ("post", "/agent/create", "body", "max_attempts", "max_attempts"),
    ("post", "/agent/update/{agent_id}", "body", "input_timeout_seconds", "input_timeout_seconds"),
    ("post", "/agent/update/{agent_id}", "body", "description", "description"),
    ("post", "/agent/{agent_id}/status", "body", "status", "agent_status"),
    ("post", "/agent/{agent_id}/status", "body", "status_message", "status_message"),
]
KEYWORDS = {"minimum": "minimum", "maximum": "maximum", "min_length": "minLength", "max_length": "maxLength"}
KEYWORDS |= {"pattern": "pattern", "format": "format", "min_items": "minItems", "max_items": "maxItems"}


def body_schema(document: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = found["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


@pytest.mark.parametrize(("method", "path", "where", "field", "rule"), DECLARED, ids=[d[1] + d[3] for d in DECLARED])
def test_the_server_s_field_rules_are_declared(method: str, path: str, where: str, field: str, rule: str) -> None:
    document = load()
    found = operation(document, method, path)
    if where == "body":
        schema = body_schema(document, found)["properties"][field]
    else:
        [parameter] = [p for p in found["parameters"] if p["name"] == field and p["in"] == where]
        schema = parameter["schema"]
    expected = Limits().rules()[rule]
    for attribute, keyword in KEYWORDS.items():
        if (value := getattr(expected, attribute)) is not None:
            assert schema.get(keyword) == value, (keyword, schema)
    assert schema.get("enum", []) == list(expected.enum), schema


def test_request_bodies_are_closed_and_path_ids_have_patterns() -> None:
    """The server refuses unknown body fields and malformed ids: the document says so everywhere."""
    document = load()
    for path, item in document["paths"].items():
        for method, found in item.items():
            if "requestBody" in found:
                assert body_schema(document, found)["additionalProperties"] is False, (method, path)
            for parameter in found.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["pattern"].startswith("^"), (method, path, parameter)


def test_what_is_made_links_to_what_can_be_done_with_it() -> None:
    found = operation(load(), "post", "/agent/request/{agent_id}")
    links = found["responses"]["202"]["links"]
    assert links["TaskService_GetStatus"]["parameters"] == {
        "agent_id": "$response.body#/agent_id",
        "task_id": "$response.body#/task_id",
    }
    assert "TaskService_WatchTask" not in links  # a watch of a live task stays open
    created = operation(load(), "post", "/v1/agent/create")["responses"]["200"]["links"]
    assert created["TaskService_Submit_2"]["operationId"] == "TaskService_Submit_2"  # /v1 links to /v1
