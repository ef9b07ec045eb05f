"""Fixtures for the gateway tests: a real service on a free port with a real Envoy in front.

`gateway` is Envoy started by the project's own launcher on port 0 (several tests and several
gateways can run at once); `rest` is an HTTP client through it with a client API key. Nothing
is faked: every request goes HTTP -> Envoy -> gRPC -> the service -> SQLite and back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.gateway import Gateway
from tests.gateway.support import http_client


@pytest_asyncio.fixture
async def gateway(service: Service) -> AsyncIterator[Gateway]:
    async with Gateway("127.0.0.1", 0, service.settings.grpc_host, service.port) as gw:
        yield gw


@pytest_asyncio.fixture
async def key(service: Service) -> str:
    return await create_api_key(service.store, "default", Role.CLIENT)


@pytest_asyncio.fixture
async def rest(gateway: Gateway, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """Through Envoy, as a client of tenant "default" (x-api-key)."""
    async with http_client(gateway, {"x-api-key": key}) as client:
        yield client


@pytest_asyncio.fixture
async def anonymous(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """Through Envoy, without credentials."""
    async with http_client(gateway, {}) as client:
        yield client


@pytest_asyncio.fixture
async def agent(rest: httpx.AsyncClient) -> str:
    """An agent created over REST; its id."""
    response = await rest.post("/agent/create", json={"name": "rest-agent"})
    assert response.status_code == 200, response.text
    return str(response.json()["agent_id"])


@pytest.fixture(params=["", "/v1"], ids=["root", "v1"])
def prefix(request: pytest.FixtureRequest) -> str:
    """Every path answers at the root and under /v1."""
    return str(request.param)
