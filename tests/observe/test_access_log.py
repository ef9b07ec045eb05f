"""The access log over a real grpc.aio server on both backends: one line per RPC when it ends
(a stream at its end), with method, code, duration, credential id, peer and the call's ids, and
nothing of the credential's secret."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.observe import tracing
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.observe.support import Lines
from tests.support import Api

pytestmark = pytest.mark.asyncio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def access(lines: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "agenttasks.access" and line["method"].endswith(method)]


async def logged(json_lines: Lines, method: str) -> list[dict[str, Any]]:
    """The lines so far once `method`'s line is among them: a call's line is written as it ends on
    the server, which can be just after its client has the answer."""
    for _ in range(1000):
        if access(lines := json_lines(), method):
            return lines
        await asyncio.sleep(0.01)
    return lines


async def test_every_rpc_gets_one_access_line_with_its_ids(
    service: Service, connect: Callable[..., Api], json_lines: Lines
) -> None:
    key = await create_api_key(service.store, "default", Role.CLIENT)
    key_id = key.split("_")[1]
    api = connect(key)
    agent_id = await api.create_agent("logged")
    metadata = (*api.metadata, ("x-request-id", "req-1"), ("traceparent", TRACEPARENT))
    submitted = await api.tasks.Submit(
        tpb.SubmitRequest(agent_id=agent_id, message="hi", request_id="idem-1"), metadata=metadata
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await api.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id="01a23cc4-0000-7000-8000-000000000000"),
            metadata=api.metadata,
        )
    message = tpb.SendMessageRequest(agent_id=agent_id, task_id=submitted.task_id, message="more")
    await api.tasks.SendMessage(message, metadata=(*api.metadata, ("idempotency-key", "idem-2")))
    await api.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=submitted.task_id), metadata=api.metadata)
    watch = tpb.WatchTaskRequest(agent_id=agent_id, task_id=submitted.task_id)
    events = [message async for message in api.tasks.WatchTask(watch, metadata=api.metadata)]
    assert events  # the snapshot of the cancelled task, then the stream ends
    stranger = connect(key[: len("atk_") + 16] + "_" + "x" * 43)  # the right key id, a wrong secret
    with pytest.raises(grpc.aio.AioRpcError):
        await stranger.agents.ListAgents(apb.ListAgentsRequest(), metadata=stranger.metadata)

    lines = await logged(json_lines, "/ListAgents")  # a refused call may be logged after its answer
    (submit,) = access(lines, "/Submit")
    assert submit["level"] == "INFO" and submit["code"] == "OK"
    assert submit["method"] == "/agenttasks.v1.TaskService/Submit"
    assert isinstance(submit["duration_ms"], float) and submit["duration_ms"] >= 0
    assert submit["peer"].startswith(("ipv4:", "ipv6:"))
    assert (submit["tenant"], submit["credential"]) == ("default", key_id)
    assert (submit["agent_id"], submit["task_id"]) == (agent_id, submitted.task_id)
    assert (submit["request_id"], submit["trace_id"], submit["idempotency_key"]) == ("req-1", TRACE_ID, "idem-1")

    (missing,) = access(lines, "/GetStatus")
    assert missing["code"] == "NOT_FOUND" and missing["credential"] == key_id
    assert "request_id" not in missing and "trace_id" not in missing  # none sent: none inherited
    (sent,) = access(lines, "/SendMessage")
    assert sent["code"] == "OK" and sent["idempotency_key"] == "idem-2"
    (cancel,) = access(lines, "/Cancel")
    assert cancel["code"] == "OK" and cancel["task_id"] == submitted.task_id
    (watched,) = access(lines, "/WatchTask")
    assert watched["code"] == "OK" and watched["task_id"] == submitted.task_id
    (refused,) = access(lines, "/ListAgents")
    assert refused["code"] == "UNAUTHENTICATED" and "credential" not in refused and "tenant" not in refused

    everything = "\n".join(map(str, lines))
    assert key.split("_", 2)[2] not in everything and "x" * 43 not in everything


async def test_a_stream_the_client_leaves_is_logged_as_cancelled(
    service: Service, client: Api, agent_id: str, json_lines: Lines
) -> None:
    task = await client.submit(agent_id)
    request = tpb.WatchTaskRequest(agent_id=agent_id, task_id=task.task_id)
    call = client.tasks.WatchTask(request, metadata=client.metadata)
    await call.read()  # the snapshot: the stream is under way on the server
    call.cancel()
    watched = access(await logged(json_lines, "/WatchTask"), "/WatchTask")  # heard after the client
    assert [line["code"] for line in watched] == ["CANCELLED"]


async def test_with_tracing_on_a_call_logs_the_trace_id_of_its_span(
    client: Api, agent_id: str, json_lines: Lines
) -> None:
    """No traceparent sent: the Submit's span starts a trace, and its lines name that trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        submitted = await client.submit(agent_id)
    finally:
        tracing.use(None)
        provider.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/Submit")]
    assert span.context is not None
    (line,) = access(await logged(json_lines, "/Submit"), "/Submit")
    assert line["task_id"] == submitted.task_id and line["trace_id"] == format(span.context.trace_id, "032x")
