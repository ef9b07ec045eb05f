"""The ceiling: Submit-shaped unary calls to the trivial echo server, through the same client
machinery (channel, stub-style callable, closed loop, event loop) as the real Submit."""

from __future__ import annotations

import sys

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.echo_server import ECHO_SUBMIT
from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc
from bench.workloads.common import closed_load, measured_loop, submit_request

ECHO_COMMAND = [sys.executable, "-m", "bench.echo_server"]
# Same shape and size as the real credential, so both loads send the same bytes.
FAKE_KEY = "atk_0123456789abcdef_" + "k" * 43
FAKE_AGENT = "01900000-0000-7000-8000-000000000001"


async def echo(ctx: Context) -> list[Outcome]:
    workdir = ctx.scratch("echo")
    async with Proc("echo", ECHO_COMMAND, workdir) as proc:
        address = (await proc.wait_for_line(r"listening on (\S+)")).group(1)
        channel = loadgen.channel(address)
        try:
            submit = channel.unary_unary(
                ECHO_SUBMIT,
                request_serializer=pb.SubmitRequest.SerializeToString,
                response_deserializer=pb.SubmitResponse.FromString,
            )
            request = submit_request(FAKE_AGENT)
            metadata = (("authorization", f"Bearer {FAKE_KEY}"),)

            async def call(_: int) -> None:
                await submit(request, metadata=metadata, timeout=30)

            result, usage = await measured_loop(ctx, call, {"server": proc.pid})
        finally:
            await channel.close(grace=None)
    ctx.discard(workdir)
    return [
        Outcome(
            "echo",
            "gRPC echo ceiling",
            load=closed_load(ctx, "Submit-sized unary calls to a trivial grpc.aio server"),
            metrics={**result.metrics(), **usage.metrics},
            details={**usage.details, "first_error": result.first_error, "per_second": result.per_second},
        )
    ]
