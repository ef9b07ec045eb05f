"""Submit's own CPU cost: the servicer called directly (no gRPC), 64 at a time, on a real
service with a real SQLite file. Set beside the echo server's CPU per call, it says how much of
a Submit over gRPC is ours and how much is gRPC's (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agenttasks.api.gate import Gate
from agenttasks.api.task_servicer import TaskServicer
from agenttasks.app import Service
from agenttasks.auth import Authenticator, create_api_key, server_jwt_secret
from agenttasks.core.model import Principal, Role
from agenttasks.settings import Settings
from agenttasks.v1 import task_service_pb2 as pb

IN_FLIGHT = 64
PER_SLOT = 100


class _Context:
    """What Submit reads of a gRPC servicer context: the call metadata (abort means a bug here)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: object, details: str, trailing: object = None) -> None:
        raise RuntimeError(f"Submit failed: {code} {details}")


async def main(rounds: int = 3, per_slot: int = PER_SLOT) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings.model_validate({"db": str(Path(scratch) / "probe.db"), "grpc_port": 0, "gateway": False})
        async with Service(settings) as service:
            key = await create_api_key(service.store, "default", Role.CLIENT)
            admin = Principal(tenant="default", role=Role.ADMIN, subject="probe")
            agent = await service.agents.create(admin, name="probe")
            # The service's own gate is private; this one is built the same way.
            secret = await server_jwt_secret(service.store, settings)
            cache = settings.api_key_cache_seconds
            gate = Gate(Authenticator(service.store, settings, secret, api_key_cache_ttl=cache))
            servicer = TaskServicer(service.tasks, gate)
            context = _Context([("authorization", f"Bearer {key}")])
            request = pb.SubmitRequest(agent_id=agent.agent_id, message="x" * 100)

            async def slot(calls: int) -> None:
                for _ in range(calls):
                    await servicer.Submit(request, context)  # type: ignore[arg-type]

            await asyncio.gather(*(slot(10) for _ in range(IN_FLIGHT)))  # warm up
            for _ in range(rounds):
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(slot(per_slot) for _ in range(IN_FLIGHT)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                calls = IN_FLIGHT * per_slot
                print(f"{calls / wall:7,.0f} Submits/s in process, {cpu / calls * 1e6:5.0f} us CPU per Submit")


if __name__ == "__main__":
    asyncio.run(main())
