"""Auth over real gRPC: every call needs a credential; keys and JWTs both work; roles bound calls;
health and reflection answer without credentials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agenttasks.app import Service
from agenttasks.auth import create_api_key, issue_token, revoke_api_key, server_jwt_secret
from agenttasks.core.model import Role
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from tests.support import Api, api_for, error_info, make_settings

pytestmark = pytest.mark.asyncio


async def test_no_credential_is_unauthenticated(service: Service, connect: Callable[..., Api]) -> None:
    api = connect("ignored")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.agents.ListAgents(apb.ListAgentsRequest())
    assert error_info(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("credential", ["atk_0000000000000000_wrong", "not-a-key-or-jwt", "Bearer"])
async def test_bad_credentials_are_unauthenticated(
    service: Service, connect: Callable[..., Api], credential: str
) -> None:
    api = connect(credential)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_x_api_key_header_works(service: Service, connect: Callable[..., Api]) -> None:
    key = await create_api_key(service.store, "default", Role.CLIENT)
    api = connect(key, header="x-api-key")
    await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)


async def test_jwt_from_the_server_secret_works_and_names_the_tenant(
    service: Service, connect: Callable[..., Api], client: Api
) -> None:
    secret = await server_jwt_secret(service.store, service.settings)
    api = connect(issue_token(secret, "default", 60))
    agent_id = await client.create_agent("shared")
    listed = await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
    assert agent_id in [a.agent_id for a in listed.agents]
    stranger = connect(issue_token(secret, "elsewhere", 60))
    listed = await stranger.agents.ListAgents(apb.ListAgentsRequest(), metadata=stranger.metadata)
    assert list(listed.agents) == []


async def test_expired_jwt_is_unauthenticated(service: Service, connect: Callable[..., Api]) -> None:
    from datetime import timedelta

    from agenttasks.core.model import utcnow

    secret = await server_jwt_secret(service.store, service.settings)
    token = issue_token(secret, "default", 60, now=utcnow() - timedelta(minutes=5))
    api = connect(token)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_worker_role_may_not_submit(service: Service, connect: Callable[..., Api], agent_id: str) -> None:
    api = connect(await create_api_key(service.store, "default", Role.WORKER))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.submit(agent_id)
    assert error_info(caught.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # nor read the tenant's tasks
        await api.tasks.GetStatus(tpb.GetStatusRequest(agent_id="-", task_id=agent_id), metadata=api.metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_revoked_key_stops_working(db_path: Path) -> None:
    async with Service(make_settings(db_path, api_key_cache_seconds=0)) as service:
        key = await create_api_key(service.store, "default", Role.CLIENT)
        api = api_for(service.address, key)
        try:
            await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
            assert await revoke_api_key(service.store, key.split("_")[1])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await api.channel.close()


async def test_health_and_reflection_need_no_credential(service: Service) -> None:
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", "agenttasks.v1.TaskService", "agenttasks.v1.AgentService"]:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
        assert {"agenttasks.v1.TaskService", "agenttasks.v1.AgentService", "grpc.health.v1.Health"} <= names


async def test_unexpected_errors_leave_as_internal_not_unknown(
    service: Service, client: Api, agent_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(service.tasks, "status", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tasks.GetStatus(
            tpb.GetStatusRequest(agent_id=agent_id, task_id=agent_id), metadata=client.metadata
        )
    assert error_info(caught.value)[:2] == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "passwd" not in (caught.value.details() or "")


async def test_a_start_that_cannot_bind_does_not_use_up_the_bootstrap_key(tmp_path: Path) -> None:
    import socket

    from agenttasks.app import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clash = Service(make_settings(tmp_path / "fresh.db", grpc_port=port))
        with pytest.raises(StartupError):
            await clash.start()
    async with Service(make_settings(tmp_path / "fresh.db")) as service:
        assert service.bootstrap_key is not None
