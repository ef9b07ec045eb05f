"""Bytes the server cannot decode answer INVALID_ARGUMENT on every method, and log no traceback.

Sent raw (no stubs, no serializer of ours), without credentials, as an anonymous client could.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, symbol_database

from agenttasks.app import Service
from agenttasks.v1 import agent_service_pb2, task_service_pb2, webhook_service_pb2, worker_service_pb2
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, error_info

pytestmark = pytest.mark.asyncio

SERVICES = [task_service_pb2, agent_service_pb2, webhook_service_pb2, worker_service_pb2]
UNARY = [
    f"/{service.full_name}/{method.name}"
    for module in SERVICES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if not method.client_streaming and not method.server_streaming
]
SERVER_STREAMING = ["/agenttasks.v1.TaskService/WatchTask"]
CONNECT = "/agenttasks.v1.WorkerService/Connect"


def nested_metadata(depth: int) -> bytes:
    """A SubmitRequest whose metadata nests `depth` objects deep (past protobuf's limit at ~33)."""
    inner = struct_pb2.Struct()
    for _ in range(depth):
        outer = struct_pb2.Struct()
        outer.fields["a"].struct_value.CopyFrom(inner)
        inner = outer
    request = tpb.SubmitRequest(agent_id="00000000-0000-0000-0000-000000000000", message="m")
    request.metadata.CopyFrom(inner)
    return request.SerializeToString()


rng = random.Random(1234)
BAD = {
    "invalid-utf8": b"\x0a\x02\xff\xfe",  # field 1, a string, holding bytes that are not UTF-8
    "truncated": b"\x0a\x05ab",  # says 5 bytes follow, 2 do
    "bad-tag": b"\x00\x01",  # field number 0
    **{f"random-{i}": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for i in range(6)},
}


def refused(error: grpc.aio.AioRpcError) -> None:
    code, reason, fields = error_info(error)
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["request"]), error
    assert "Error parsing" not in (error.details() or "") and "Traceback" not in (error.details() or "")


async def test_every_unary_method_refuses_undecodable_bytes(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(service.address) as channel:
        for method in UNARY:
            call = channel.unary_unary(method)
            for name, payload in BAD.items():
                try:
                    await call(payload, timeout=10)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                        continue  # a random string that happened to decode: checked after decoding
                    refused(error)
                    continue
                pytest.fail(f"{method} accepted {name} without credentials")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]  # rate-limited


def undecodable(method: str) -> list[bytes]:
    """For `method`: a string field holding bytes that are not UTF-8 (if it has a string field),
    and the general forms, each only if protobuf's own decoder refuses it for that message."""
    service, name = method.strip("/").rsplit("/", 1)
    descriptor = next(
        m.input_type
        for module in SERVICES
        for s in module.DESCRIPTOR.services_by_name.values()
        if s.full_name == service
        for m in s.methods
        if m.name == name
    )
    strings = [f.number for f in descriptor.fields if f.type == f.TYPE_STRING]
    forms = [bytes([strings[0] << 3 | 2, 2]) + b"\xff\xfe"] if strings else []
    forms += [BAD["truncated"], BAD["bad-tag"]]
    message = symbol_database.Default().GetSymbol(descriptor.full_name)
    return [form for form in forms if not decodes(message, form)]


def decodes(message: Any, data: bytes) -> bool:
    try:
        message.FromString(data)
    except Exception:
        return False
    return True


async def test_known_undecodable_forms_are_refused_on_every_method(service: Service) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        for method in UNARY:
            forms = undecodable(method)
            assert forms, method
            for form in forms:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(method)(form, timeout=10)
                refused(caught.value)


async def test_metadata_nested_past_the_decoders_limit_is_refused_and_nothing_is_queued(
    service: Service, client: Api, agent_id: str
) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        submit = channel.unary_unary("/agenttasks.v1.TaskService/Submit")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(nested_metadata(40), metadata=client.metadata, timeout=10)
    refused(caught.value)
    listed = await client.tasks.ListTasks(tpb.ListTasksRequest(agent_id=agent_id), metadata=client.metadata)
    assert list(listed.tasks) == []


async def test_streams_refuse_undecodable_requests(service: Service, client: Api) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in channel.unary_stream(SERVER_STREAMING[0])(BAD["invalid-utf8"], timeout=10):
                pass
        refused(caught.value)
        connect = channel.stream_stream(CONNECT)

        async def garbage() -> object:
            yield BAD["truncated"]

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in connect(garbage(), metadata=client.metadata, timeout=10):
                pass
        refused(caught.value)
