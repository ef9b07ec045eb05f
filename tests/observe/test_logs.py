"""observe/logs.py on its own: the JSON line's shape, the call fields' reach (their task and the
tasks it starts, no other), trace ids from traceparent, and the scrubbing of secrets."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest

from agenttasks.auth.api_keys import new_api_key
from agenttasks.auth.jwt_tokens import issue_token
from agenttasks.observe import logs
from agenttasks.webhooks import signing
from tests.observe.support import Lines, logging_to_buffer


def test_a_json_line_has_time_level_logger_message_and_the_error(json_lines: Lines) -> None:
    log = logging.getLogger("agenttasks.test")
    log.info("hello %s", "there")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = json_lines()
    assert first["level"] == "INFO" and first["logger"] == "agenttasks.test" and first["message"] == "hello there"
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert len(first["time"]) == len("2026-01-02T03:04:05.678Z")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["error"]


@pytest.mark.asyncio
async def test_call_fields_reach_their_task_and_its_children_only(json_lines: Lines) -> None:
    log = logging.getLogger("agenttasks.test")
    inside = asyncio.Event()

    async def call(tenant: str, task_id: str) -> None:
        logs.bind(tenant=tenant, task_id=task_id, worker_id="")  # empty values are left out
        await inside.wait()  # both calls are under way at once
        log.info("in %s", task_id)
        await asyncio.create_task(child(task_id))

    async def child(task_id: str) -> None:
        logs.bind(agent_id="a-" + task_id)  # the child's own addition stays with the child
        log.info("child of %s", task_id)

    calls = [asyncio.create_task(call("t1", "one")), asyncio.create_task(call("t2", "two"))]
    await asyncio.sleep(0)
    inside.set()
    await asyncio.gather(*calls)
    log.info("outside")
    by_message = {line["message"]: line for line in json_lines()}
    assert by_message["in one"]["tenant"] == "t1" and by_message["in one"]["task_id"] == "one"
    assert by_message["in two"]["tenant"] == "t2" and by_message["in two"]["task_id"] == "two"
    assert "worker_id" not in by_message["in one"] and "agent_id" not in by_message["in one"]
    assert by_message["child of two"]["tenant"] == "t2" and by_message["child of two"]["agent_id"] == "a-two"
    assert "tenant" not in by_message["outside"] and "task_id" not in by_message["outside"]


def test_trace_id_comes_from_a_w3c_traceparent_only() -> None:
    assert logs.trace_id_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert logs.trace_id_from("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00") == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    for bad in ["", "nonsense", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f35-00f067aa0ba902b7-01"]:
        assert logs.trace_id_from(bad) == ""


def test_secrets_are_scrubbed_from_messages_and_tracebacks(json_lines: Lines) -> None:
    key, record = new_api_key("default", "client")
    token = issue_token("a-jwt-secret-of-enough-length-for-hs256", "default", 60)
    webhook_secret = signing.new_secret()
    signature = signing.sign(webhook_secret, "msg_1", 1700000000, b"{}")
    log = logging.getLogger("agenttasks.test")
    log.warning("key %s token %s", key, token)
    log.warning("header Authorization: Bearer opaque-value-123; secret %s sig %s", webhook_secret, signature)
    try:
        raise RuntimeError(f"while checking {key}")
    except RuntimeError:
        log.exception("failed")
    text = "\n".join(json.dumps(line) for line in json_lines())
    for secret in [key, key.split("_", 2)[2], token, "opaque-value-123", webhook_secret, signature.split(",", 1)[1]]:
        assert secret not in text
    assert f"atk_{record.key_id}_[redacted]" in text  # the key id still names the key


def test_text_lines_carry_the_call_fields_as_key_value_pairs() -> None:
    def call() -> None:
        logs.bind(tenant="acme", task_id="t-1")
        logging.getLogger("agenttasks.test").info("assigned")
        logs.access_log.info("not shown: the access log is off with text by default")

    with logging_to_buffer("text") as buffer:
        contextvars.copy_context().run(call)  # as a call's own task would: the binding stays there
        (line,) = buffer.getvalue().splitlines()
    assert line.endswith(" INFO agenttasks.test: assigned tenant=acme task_id=t-1"), line


def test_an_envoy_access_line_is_logged_again_in_the_same_form(json_lines: Lines) -> None:
    envoy = {
        "method": "GET",
        "path": "/agent/list?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "status": 200,
        "duration_ms": 3,
        "request_id": "r-1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "upstream": "127.0.0.1:50051",
        "grpc_status": None,
    }
    assert logs.log_envoy_access(json.dumps(envoy))
    assert not logs.log_envoy_access("[warning] not an access line")
    (line,) = json_lines()
    assert line["logger"] == "envoy.access" and line["level"] == "INFO"
    assert line["status"] == 200 and line["request_id"] == "r-1" and line["upstream"] == "127.0.0.1:50051"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and "grpc_status" not in line
    assert "eyJ" not in json.dumps(line)
