"""Helpers for the gateway tests: an HTTP client, the error-body check, an SSE frame reader."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import httpx

from agenttasks.gateway import Gateway

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
GRPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "RESOURCE_EXHAUSTED": 8,
    "PERMISSION_DENIED": 7,
    "FAILED_PRECONDITION": 9,
    "UNIMPLEMENTED": 12,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}


def http_client(gateway: Gateway, headers: Mapping[str, str]) -> httpx.AsyncClient:
    # trust_env=False: a proxy set in the environment must not sit between the test and Envoy.
    return httpx.AsyncClient(base_url=gateway.url, headers=dict(headers), timeout=30, trust_env=False)


def is_time(value: object) -> bool:
    """An RFC 3339 UTC timestamp, as the contract promises."""
    if not isinstance(value, str) or not RFC3339_UTC.match(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def assert_error(
    response: httpx.Response, status: int, reason: str, code: str, field: str | None = None
) -> dict[str, Any]:
    """A JSON google.rpc.Status body with this gRPC code and ErrorInfo reason (and bad field)."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == GRPC_CODES[code], body
    assert isinstance(body["message"], str) and body["message"], body
    infos = [d for d in body["details"] if d["@type"] == ERROR_INFO]
    assert [i["reason"] for i in infos] == [reason], body
    assert infos[0]["domain"] == "agenttasks.dev", body
    if field is not None:
        violations = [v for d in body["details"] if d["@type"] == BAD_REQUEST for v in d["field_violations"]]
        assert field in [v["field"] for v in violations], body
    return body


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a text/event-stream body, checking the framing of every byte.

    Each event is exactly `data: <one line of JSON>` followed by a blank line, and the stream
    ends on a frame boundary.
    """
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"] == "text/event-stream", response.headers
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            assert frame.startswith(b"data: "), frame
            assert b"\n" not in frame, frame
            yield json.loads(frame[len(b"data: ") :])
    assert buffer == b"", f"stream ended inside a frame: {buffer!r}"
