"""A key revoked with `agenttasks keys revoke` (another process) is refused on the next call by
a running server, though that server had the key cached for minutes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import agent_service_pb2 as apb
from tests.cli.support import run_cli
from tests.support import api_for, error_info, make_settings

pytestmark = pytest.mark.asyncio


async def test_the_next_call_after_keys_revoke_is_refused(db_path: Path) -> None:
    settings = make_settings(db_path, api_key_cache_seconds=600)
    async with Service(settings) as service:
        key = await create_api_key(service.store, "default", Role.CLIENT)
        api = api_for(service.address, key)
        try:
            await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)  # cached now
            key_id = key.split("_")[1]
            result = await asyncio.to_thread(run_cli, "keys", "revoke", key_id, env={"AGENTTASKS_DB": str(db_path)})
            assert result.returncode == 0, result.stderr
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.agents.ListAgents(apb.ListAgentsRequest(), metadata=api.metadata)
        finally:
            await api.channel.close()
    assert error_info(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
