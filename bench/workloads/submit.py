"""Submit, durable: over gRPC straight to the server, and as REST through the real Envoy.

Each Submit is answered only after its task and event are committed with synchronous=FULL (the
store's default). Every run starts a fresh server on a fresh database.
"""

from __future__ import annotations

from bench.outcome import Outcome
from bench.plan import Context
from bench.rest import Connection
from bench.target import Server
from bench.workloads.common import MESSAGE, closed_load, measured_loop, submit_request


async def submit_grpc(ctx: Context) -> list[Outcome]:
    workdir = ctx.scratch("submit-grpc")
    async with Server(workdir, metrics=ctx.metrics) as server:
        api = server.api()
        request = submit_request(server.agent_id)

        async def call(_: int) -> None:
            await api.tasks.Submit(request, metadata=api.metadata, timeout=30)

        result, usage = await measured_loop(ctx, call, server.pids(), profile="submit_grpc")
        scrapes = {"scrapes": server.scrapes, "scrape_errors": server.scrape_errors} if ctx.metrics else {}
    ctx.discard(workdir)
    return [
        Outcome(
            "submit_grpc",
            "Submit over gRPC (durable)",
            load=closed_load(ctx, "Submit over one channel"),
            metrics={**result.metrics(), **usage.metrics},
            details={**usage.details, **scrapes, "first_error": result.first_error, "per_second": result.per_second},
        )
    ]


async def submit_rest(ctx: Context) -> list[Outcome]:
    workdir = ctx.scratch("submit-rest")
    async with Server(workdir, gateway=True) as server:
        connections = [Connection(server.rest_url) for _ in range(ctx.plan.concurrency)]
        first = connections[0]
        request = Connection.request(
            "POST",
            f"/agent/request/{server.agent_id}",
            f"{first.host}:{first.port}",
            {"Authorization": f"Bearer {server.key}"},
            {"message": MESSAGE},
        )

        async def call(slot: int) -> None:
            await connections[slot].send(request)

        try:
            result, usage = await measured_loop(ctx, call, server.pids(), profile="submit_rest")
        finally:
            for connection in connections:
                await connection.close()
    ctx.discard(workdir)
    return [
        Outcome(
            "submit_rest",
            "Submit over REST via Envoy (durable)",
            load=closed_load(ctx, "POST /agent/request/{id}, HTTP/1.1 keep-alive, one connection per slot"),
            metrics={**result.metrics(), **usage.metrics},
            details={**usage.details, "first_error": result.first_error, "per_second": result.per_second},
        )
    ]
