"""Watch fan-out: W watchers of one task, and the time for one event to reach them all.

Ours: W WatchTask streams on one queued task; once every stream has its snapshot, one
SendMessage adds a `message` event, and the clock runs from just before that call until the last
stream has the event. The baseline is the bare broadcast of `bench.echo_server` (same grpcio,
options, process model and message types; no store, no auth), driven by the same client code.
Server memory per stream is the server's RSS growth from before the streams opened to after
they all had their snapshot, divided by W. The client (this process) reads all W streams, so
its own speed is part of both figures alike.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.echo_server import BROADCAST_PUBLISH, BROADCAST_WATCH
from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc, cpu_sample, rss_bytes
from bench.target import Cluster
from bench.workloads.ceiling import ECHO_COMMAND, FAKE_AGENT, FAKE_KEY
from bench.workloads.common import submit_request

SETTLE_SECONDS = 1.0
OPEN_SECONDS = 120.0


async def _fan_out(
    ctx: Context,
    address: str,
    pid: int,
    watchers: int,
    open_stream: Callable[[Any], Any],
    publish: Callable[[], Awaitable[object]],
) -> tuple[dict[str, float], dict[str, Any]]:
    """Open `watchers` streams, wait for every snapshot, then `rounds` times: publish one event and
    time until every stream has it. Metrics use the median round."""
    rounds = ctx.plan.fanout_rounds
    channels = [loadgen.channel(address) for _ in range(math.ceil(watchers / ctx.plan.streams_per_channel))]
    snapshots = 0
    all_snapshots = asyncio.Event()
    arrivals: list[list[int]] = [[] for _ in range(rounds)]
    arrived = [asyncio.Event() for _ in range(rounds)]
    calls: list[Any] = []

    async def follow(index: int) -> None:
        nonlocal snapshots
        call = open_stream(channels[index % len(channels)])
        calls.append(call)
        first = await call.read()
        if getattr(first, "type", "") != "snapshot":
            raise RuntimeError(f"expected a snapshot, got {first!r}")
        snapshots += 1
        if snapshots == watchers:
            all_snapshots.set()
        for n in range(rounds):
            event = await call.read()
            arrivals[n].append(loadgen.now_ns())
            if getattr(event, "type", "") != "message":
                raise RuntimeError(f"expected the published message, got {event!r}")
            if len(arrivals[n]) == watchers:
                arrived[n].set()

    reach_ms: list[float] = []
    p50_ms: list[float] = []
    ack_ms: list[float] = []
    server_ms: list[float] = []  # CPU time the server spent in a round: with the client's, shows who limits it
    client_ms: list[float] = []
    try:
        rss_before = rss_bytes(pid)
        followers = [asyncio.create_task(follow(i)) for i in range(watchers)]
        opened = loadgen.now_ns()
        async with asyncio.timeout(OPEN_SECONDS):
            await _first_failure_or(all_snapshots.wait(), followers)
        open_seconds = (loadgen.now_ns() - opened) / 1e9
        await asyncio.sleep(SETTLE_SECONDS)
        rss_after = rss_bytes(pid)
        # The client's garbage collector must not pause in the middle of a round: this process
        # holds every stream, and a full collection over them takes long enough to skew a round.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            for n in range(rounds):
                server_before, client_before = cpu_sample(pid), cpu_sample(os.getpid())
                t0 = loadgen.now_ns()
                await publish()
                ack_ms.append((loadgen.now_ns() - t0) / 1e6)
                async with asyncio.timeout(OPEN_SECONDS):
                    await _first_failure_or(arrived[n].wait(), followers)
                reach_ms.append((max(arrivals[n]) - t0) / 1e6)
                server_ms.append((cpu_sample(pid).total - server_before.total) * 1000)
                client_ms.append((cpu_sample(os.getpid()).total - client_before.total) * 1000)
                p50_ms.append((loadgen.percentile(sorted(arrivals[n]), 50) - t0) / 1e6)
                await asyncio.sleep(SETTLE_SECONDS / 2)
        finally:
            gc.enable()
            gc.unfreeze()
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close(grace=None)
    metrics = {
        "watchers": watchers,
        "reach_all_ms": round(statistics.median(reach_ms), 2),
        "reach_p50_ms": round(statistics.median(p50_ms), 2),
        "publish_ack_ms": round(statistics.median(ack_ms), 2),
        "kb_per_stream": round((rss_after - rss_before) / watchers / 1024, 1),
        "open_seconds": round(open_seconds, 2),
        "server_cpu_ms": round(statistics.median(server_ms), 1),
        "client_cpu_ms": round(statistics.median(client_ms), 1),
    }
    return metrics, {"reach_all_ms_per_round": [round(r, 2) for r in reach_ms]}


async def _first_failure_or(wait: Awaitable[object], followers: list[asyncio.Task[None]]) -> None:
    """Wait for `wait`, but raise at once if a follower fails first."""
    waiter = asyncio.ensure_future(wait)
    pending: set[asyncio.Future[Any]] = {waiter, *followers}
    while not waiter.done():
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                waiter.cancel()
                raise task.exception()  # type: ignore[misc]


async def ours(ctx: Context, watchers: int) -> Outcome:
    workdir = ctx.scratch(f"fanout-{watchers}")
    async with Cluster(ctx.but(replicas=1), workdir, f"fanout_{watchers}") as cluster:
        server = cluster.first
        api = server.api()
        answer = await api.tasks.Submit(submit_request(server.agent_id), metadata=api.metadata, timeout=30)
        request = pb.WatchTaskRequest(agent_id=server.agent_id, task_id=answer.task_id)

        def open_stream(channel: Any) -> Any:
            return channel.unary_stream(
                "/agenttasks.v1.TaskService/WatchTask",
                request_serializer=pb.WatchTaskRequest.SerializeToString,
                response_deserializer=pb.WatchTaskResponse.FromString,
            )(request, metadata=api.metadata)

        message = pb.SendMessageRequest(agent_id=server.agent_id, task_id=answer.task_id, message="ping")

        async def publish() -> None:
            await api.tasks.SendMessage(message, metadata=api.metadata, timeout=30)

        metrics, details = await _fan_out(ctx, server.address, server.pid, watchers, open_stream, publish)
    ctx.discard(workdir)
    return Outcome(
        f"fanout_{watchers}",
        f"Watch fan-out, {watchers:,} watchers",
        load=_load(ctx, watchers, f"WatchTask streams on one task ({'PostgreSQL' if ctx.on_postgres else 'SQLite'})"),
        metrics=metrics,
        details=details,
    )


async def bare(ctx: Context, watchers: int) -> Outcome:
    workdir = ctx.scratch(f"broadcast-{watchers}")
    async with Proc("broadcast", ECHO_COMMAND, workdir) as proc:
        address = (await proc.wait_for_line(r"listening on (\S+)")).group(1)
        metadata = (("authorization", f"Bearer {FAKE_KEY}"),)
        request = pb.WatchTaskRequest(agent_id=FAKE_AGENT, task_id=FAKE_AGENT)
        control = loadgen.channel(address)

        def open_stream(channel: Any) -> Any:
            return channel.unary_stream(
                BROADCAST_WATCH,
                request_serializer=pb.WatchTaskRequest.SerializeToString,
                response_deserializer=pb.WatchTaskResponse.FromString,
            )(request, metadata=metadata)

        send = control.unary_unary(
            BROADCAST_PUBLISH,
            request_serializer=pb.SendMessageRequest.SerializeToString,
            response_deserializer=pb.SendMessageResponse.FromString,
        )

        async def publish() -> None:
            message = pb.SendMessageRequest(agent_id=FAKE_AGENT, task_id=FAKE_AGENT, message="ping")
            await send(message, metadata=metadata, timeout=30)

        try:
            metrics, details = await _fan_out(ctx, address, proc.pid, watchers, open_stream, publish)
        finally:
            await control.close(grace=None)
    ctx.discard(workdir)
    return Outcome(
        f"broadcast_{watchers}",
        f"Bare grpc.aio broadcast, {watchers:,} streams",
        load=_load(ctx, watchers, "streams of the bare broadcast server"),
        metrics=metrics,
        details=details,
    )


def _load(ctx: Context, watchers: int, what: str) -> str:
    plan = ctx.plan
    return (
        f"{watchers:,} {what}, {plan.streams_per_channel:,} per channel; "
        f"median of {plan.fanout_rounds} events, each timed until all have it"
    )


async def fan_out(ctx: Context) -> list[Outcome]:
    """Ours and the bare broadcast at each watcher count; on PostgreSQL ours alone (its baseline
    is then ours on SQLite, from the `fanout` workload of the same run)."""
    outcomes = []
    for watchers in ctx.plan.watchers:
        if not ctx.on_postgres:
            outcomes.append(await bare(ctx, watchers))
        outcomes.append(await ours(ctx, watchers))
    return outcomes
