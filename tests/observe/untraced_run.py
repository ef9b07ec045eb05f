"""Run with `python -m tests.observe.untraced_run off|missing`: a whole task (Submit with a
traceparent, SDK worker, completion) through a real in-process server, in a fresh interpreter,
then print as JSON whether tracing came on and which OpenTelemetry modules got imported.

`missing` first makes every `opentelemetry` import fail, as in an install without the otel
extra. A fresh process is the only way to see imports: the test process has them all loaded.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")


async def one_task(folder: Path) -> dict[str, object]:
    from agenttasks.app import Service
    from agenttasks.auth import create_api_key
    from agenttasks.core.model import Role
    from agenttasks.observe import tracing
    from agenttasks.v1 import task_service_pb2 as tpb
    from agenttasks.worker import TaskContext, Worker
    from tests.support import api_for, make_settings

    seen: list[tuple[str, str]] = []

    async def handler(ctx: TaskContext) -> str:
        seen.append(ctx.trace)
        return "done"

    async with Service(make_settings(folder / "untraced.db")) as service:
        client = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        worker_key = await create_api_key(service.store, "default", Role.WORKER)
        agent_id = await client.create_agent("untraced")
        metadata = (*client.metadata, ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        answer = await client.tasks.Submit(tpb.SubmitRequest(agent_id=agent_id, message="hi"), metadata=metadata)
        async with Worker(service.address, worker_key, agent_id, handler, freeze_gc=False):
            for _ in range(1000):
                status = await client.tasks.GetStatus(
                    tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=client.metadata
                )
                if status.task.status == "completed":
                    break
                await asyncio.sleep(0.01)
        await client.channel.close()
    return {"status": status.task.status, "worker_saw": seen, "tracing": tracing.enabled()}


def main(mode: str) -> None:
    if mode == "missing":
        sys.meta_path.insert(0, _NoOpenTelemetry())
    from agenttasks.observe import tracing

    turned_on = tracing.setup_from_env("agenttasks")
    with tempfile.TemporaryDirectory() as folder:
        outcome = asyncio.run(one_task(Path(folder)))
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
    print(json.dumps({**outcome, "turned_on": turned_on, "otel_modules": loaded}))


if __name__ == "__main__":
    main(sys.argv[1])
