"""Credentials through the gateway: `Authorization: Bearer <JWT or key>` and `x-api-key` both reach
the server (Envoy passes the headers on as gRPC metadata); nothing else gets in."""

from __future__ import annotations

import pytest

from agenttasks.app import Service
from agenttasks.auth import issue_token, server_jwt_secret
from agenttasks.gateway import Gateway
from tests.gateway.support import assert_error, http_client

pytestmark = pytest.mark.asyncio


async def jwt_for(service: Service, tenant: str) -> str:
    return issue_token(await server_jwt_secret(service.store, service.settings), tenant, ttl_seconds=300)


@pytest.mark.parametrize("how", ["bearer-key", "bearer-jwt", "x-api-key"])
async def test_each_way_to_send_a_credential_works(service: Service, gateway: Gateway, key: str, how: str) -> None:
    headers = {
        "bearer-key": {"authorization": f"Bearer {key}"},
        "bearer-jwt": {"authorization": f"Bearer {await jwt_for(service, 'default')}"},
        "x-api-key": {"x-api-key": key},
    }[how]
    async with http_client(gateway, headers) as client:
        created = await client.post("/agent/create", json={"name": f"by-{how}"})
        assert created.status_code == 200, created.text
        agent = created.json()["agent_id"]
        submitted = await client.post(f"/v1/agent/request/{agent}", json={"message": "x"})
        assert submitted.status_code == 202, submitted.text
        listed = await client.get("/agent/list")
        assert [a["agent_id"] for a in listed.json()["agents"]] == [agent]


async def test_a_jwt_acts_in_its_own_tenant(service: Service, gateway: Gateway, key: str) -> None:
    async with http_client(gateway, {"x-api-key": key}) as default:
        agent = (await default.post("/agent/create", json={"name": "a"})).json()["agent_id"]
    async with http_client(gateway, {"authorization": f"Bearer {await jwt_for(service, 'acme')}"}) as acme:
        assert (await acme.get("/agent/list")).json()["agents"] == []
        assert_error(await acme.get(f"/agent/{agent}"), 404, "AGENT_NOT_FOUND", "NOT_FOUND")


async def test_a_jwt_is_not_an_api_key_and_a_wrong_secret_is_refused(service: Service, gateway: Gateway) -> None:
    token = await jwt_for(service, "default")
    forged = issue_token("another-secret-that-is-long-enough-0123456789", "default", ttl_seconds=300)
    for headers in ({"x-api-key": token}, {"authorization": f"Bearer {forged}"}, {"authorization": token}):
        async with http_client(gateway, headers) as client:
            assert_error(await client.get("/agent/list"), 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
