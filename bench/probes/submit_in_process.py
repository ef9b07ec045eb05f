"""Submit's own CPU cost: the servicer called directly (no gRPC), 64 at a time, on a real
service with a real SQLite file. Set beside the echo server's CPU per call, it says how much of
a Submit over gRPC is ours and how much is gRPC's (docs/benchmarks.md).

`python -m bench.probes.submit_in_process json` logs as `serve --log-format json` does, into a
file: an access line per Submit (`json-quiet`: JSON without access lines). The difference to
the default (text, no access lines) is what the access log costs (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agenttasks.api.gate import Gate
from agenttasks.api.task_servicer import TaskServicer
from agenttasks.app import Service
from agenttasks.auth import Authenticator, create_api_key, server_jwt_secret
from agenttasks.core.model import Principal, Role
from agenttasks.observe import logs
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

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def code(self) -> None:
        return None  # not aborted


async def main(rounds: int = 3, per_slot: int = PER_SLOT, log_format: str = "text") -> None:
    with tempfile.TemporaryDirectory() as scratch, (Path(scratch) / "log").open("w") as log_file:
        if log_format != "text":
            logs.configure("json", "info", access=log_format == "json", stream=log_file)
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
    asyncio.run(main(log_format=sys.argv[1] if len(sys.argv) > 1 else "text"))
