"""Many tasks streaming at once, each to its own watcher (the relay's baseline shares the pieces).

The load (the plan's `stream_*`; full: 200 tasks, 50 chunks/s each for 20 s, 10,000 chunks/s
offered): every task writes `stamped` 32-byte chunks on a schedule (`paced_writes`; a late
write goes at once, the schedule is not pushed back; the tasks' first chunks are spread over one
interval), and one watcher per task reads them. Each chunk carries its write time
(CLOCK_MONOTONIC, shared by the processes), so the watcher has write-to-receive latency, and its
number, so the workload fails if any watcher misses a chunk or gets one out of order.

- `stream_many`: the SDK worker process (`bench.worker`, capacity = tasks) writes each chunk
  with `await ctx.output(chunk)`; one WatchTask stream per task over gRPC, on one channel.
- `stream_many_sse`: the same through `serve`'s gateway: one `GET .../watch` (Server-Sent
  Events via Envoy) per task, each on its own HTTP/1.1 connection.
- `relay` (`bench.workloads.relay`, with these same pieces) is the baseline: the same chunks
  on the same schedule through a bare grpc.aio relay.

Tasks are submitted and watched first; the writers start on the harness's go (a SendMessage to
each task; SIGUSR1 to the relay's writer). Delivered chunks/s is every chunk delivered over the
time from the first write to the last delivery; CPU per chunk is the CPU each process used from
the go until the last watcher finished, over the chunks delivered.
"""

from __future__ import annotations

import asyncio
import json
import math
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context, Plan
from bench.rest import Connection
from bench.streaming import CHUNK_BYTES, Stamped
from bench.target import Api, Server, Worker
from bench.worker import STAMPED, stream_message
from bench.workloads.common import Usage, window

GRACE_SECONDS = 60.0
"""Beyond the writers' own limit: to open the watchers, flush, and end every stream."""


def chunks_per_task(plan: Plan) -> int:
    return round(plan.stream_rate * plan.stream_seconds)


def writer_limit(plan: Plan) -> float:
    """Writers that fall behind their schedule stop after this many seconds."""
    return plan.stream_seconds * 1.5 + 2


async def _all_listening(listening: asyncio.Event, watchers: list[asyncio.Task[str]]) -> None:
    """Wait until every watcher has its first message; raise at once if one ends first."""
    waiter = asyncio.ensure_future(listening.wait())
    pending: set[asyncio.Future[Any]] = {waiter, *watchers}
    try:
        async with asyncio.timeout(GRACE_SECONDS):
            while not waiter.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not waiter:
                        raise RuntimeError(f"a watcher ended before the writers started: {task.result()!r}")
    finally:
        waiter.cancel()


def counter(total: int) -> tuple[asyncio.Event, Callable[[], None]]:
    """An event set once the returned callback has been called `total` times."""
    event = asyncio.Event()
    seen = 0

    def one() -> None:
        nonlocal seen
        seen += 1
        if seen == total:
            event.set()

    return event, one


async def watched(
    ctx: Context,
    name: str,
    pids: Mapping[str, int],
    watchers: list[asyncio.Task[str]],
    listening: asyncio.Event,
    go: Callable[[], Awaitable[None]],
) -> tuple[list[str], Usage]:
    """Once every watcher listens, `go`, and wait for every watcher to end: their end reasons and
    the CPU of `pids` from the go to the last end."""
    try:
        await _all_listening(listening, watchers)
        async with window(ctx, pids, profile=name, seconds=ctx.plan.stream_seconds) as usage:
            await go()
            async with asyncio.timeout(writer_limit(ctx.plan) + GRACE_SECONDS):
                ends = await asyncio.gather(*watchers)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return list(ends), usage


def many_outcome(
    ctx: Context,
    name: str,
    title: str,
    what: str,
    streams: list[Stamped],
    ends: list[str],
    usage: Usage,
    wrote: Mapping[str, Mapping[str, Any]],
) -> Outcome:
    """The figures of one run from what its watchers received and its writers recorded."""
    plan = ctx.plan
    tasks, count = plan.stream_tasks, chunks_per_task(plan)
    offered = tasks * plan.stream_rate
    for stream in streams:
        stream.finish()
    delivered = sum(s.chunks for s in streams)
    events = sum(s.events for s in streams)
    written = sum(int(w["written"]) for w in wrote.values())
    first_sent = min((s.sent_ns[0] for s in streams if s.chunks), default=0)
    last_arrived = max((s.arrived_ns[-1] for s in streams if s.chunks), default=0)
    seconds = (last_arrived - first_sent) / 1e9
    rate = delivered / seconds if delivered and seconds > 0 else math.nan
    latencies = [a - s for stream in streams for a, s in zip(stream.arrived_ns, stream.sent_ns, strict=True)]
    per_second = [0] * (math.ceil(seconds) + 1 if delivered else 0)
    for stream in streams:
        for arrived in stream.arrived_ns:
            per_second[min(len(per_second) - 1, (arrived - first_sent) // 1_000_000_000)] += 1
    stopped = sum(1 for w in wrote.values() if w["stopped_by_limit"])
    roles = [role for role in ("server", "envoy", "worker", "client") if role in usage.cpu_seconds]
    load = (
        f"{tasks} tasks x {plan.stream_rate:g} chunks/s of {CHUNK_BYTES} bytes for {plan.stream_seconds:g} s "
        f"({offered:,.0f} chunks/s offered), {what}"
    )
    if stopped:
        load += f"; {stopped} writers fell behind and stopped at the {writer_limit(plan):g} s limit"
    outcome = Outcome(
        name,
        title,
        load=load,
        metrics={
            "rate": round(rate, 1),
            "offered_rate": offered,
            "sustained": round(rate / offered, 3),
            "tasks": tasks,
            "chunks": tasks * count,
            "written": written,
            "delivered": delivered,
            "events": events,
            "chunks_per_event": round(delivered / events, 2) if events else math.nan,
            "seconds": round(seconds, 3),
            **loadgen.latency_ms(latencies),
            "writers_behind_max_ms": round(max((int(w["behind_max_ns"]) for w in wrote.values()), default=0) / 1e6, 1),
            "writers_stopped": stopped,
            **{f"{role}_cpu_us_per_chunk": usage.cpu_us_per(role, delivered) for role in roles},
            "server_cpu_us_per_event": usage.cpu_us_per("server", events),
            **usage.metrics,
        },
        details={**usage.details, "per_second": per_second},
    )
    problems = [f"task {i}: {s.error}" for i, s in enumerate(streams) if s.error]
    problems += [f"task {i}: the stream ended with {end!r}" for i, end in enumerate(ends) if end != "TASK_FINISHED"]
    if delivered != written:
        problems.insert(0, f"{written:,} chunks written, {delivered:,} delivered")
    if len(wrote) != tasks:
        problems.insert(0, f"{len(wrote)} of {tasks} writers reported")
    if problems or not delivered:
        outcome.status = "failed"
        outcome.reason = "; ".join(problems[:3]) or "nothing delivered"
    return outcome


async def _watch_grpc(api: Api, agent_id: str, task_id: str, got: Stamped, listening: Callable[[], None]) -> str:
    call = api.tasks.WatchTask(pb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)
    async for message in aiter(call):
        at = loadgen.now_ns()
        kind = message.type
        if kind == "output":
            got.add(message.output, at)
        elif kind == "snapshot":
            got.add(message.task.output, at)
            listening()
        elif kind == "end":
            return str(message.reason)
    return "no end event"


async def _watch_sse(connection: Connection, request: bytes, got: Stamped, listening: Callable[[], None]) -> str:
    async for data in connection.events(request):
        at = loadgen.now_ns()
        event = json.loads(data)
        kind = event.get("type")
        if kind == "output":
            got.add(event.get("output", ""), at)
        elif kind == "snapshot":
            got.add(event.get("task", {}).get("output", ""), at)
            listening()
        elif kind == "end":
            return str(event.get("reason"))
    return "no end event"


async def ours(ctx: Context, *, sse: bool) -> Outcome:
    plan = ctx.plan
    name = "stream_many_sse" if sse else "stream_many"
    workdir = ctx.scratch(name.replace("_", "-"))
    record = workdir / "worker-record.json"
    tasks = plan.stream_tasks
    streams = [Stamped() for _ in range(tasks)]
    listening, listens = counter(tasks)
    connections: list[Connection] = []
    async with Server(workdir, gateway=sse) as server:
        api = server.api()
        async with Worker(server, capacity=tasks, record=record) as worker:
            message = stream_message(STAMPED, chunks_per_task(plan), plan.stream_rate, writer_limit(plan))
            submit = pb.SubmitRequest(agent_id=server.agent_id, message=message)
            answers = await asyncio.gather(
                *(api.tasks.Submit(submit, metadata=api.metadata, timeout=30) for _ in range(tasks))
            )
            ids = [answer.task_id for answer in answers]
            if sse:
                connections = [Connection(server.rest_url) for _ in ids]
                host = f"{connections[0].host}:{connections[0].port}"
                auth = {"Authorization": f"Bearer {server.key}"}
                watchers = [
                    asyncio.create_task(
                        _watch_sse(
                            connection,
                            Connection.get(f"/agent/{server.agent_id}/task/{task_id}/watch", host, auth),
                            got,
                            listens,
                        )
                    )
                    for connection, task_id, got in zip(connections, ids, streams, strict=True)
                ]
            else:
                watchers = [
                    asyncio.create_task(_watch_grpc(api, server.agent_id, task_id, got, listens))
                    for task_id, got in zip(ids, streams, strict=True)
                ]

            async def go() -> None:
                await asyncio.gather(
                    *(
                        api.tasks.SendMessage(
                            pb.SendMessageRequest(agent_id=server.agent_id, task_id=task_id, message="go"),
                            metadata=api.metadata,
                            timeout=30,
                        )
                        for task_id in ids
                    )
                )

            try:
                pids = {**server.pids(), "worker": worker.pid}
                ends, usage = await watched(ctx, name, pids, watchers, listening, go)
            finally:
                for connection in connections:
                    await connection.close()
        # The worker has stopped and written what it did.
        wrote: dict[str, Any] = json.loads(record.read_text())["streams"]
    ctx.discard(workdir)
    how = "one WatchTask stream per task over gRPC (one channel)"
    if sse:
        how = "one SSE watch per task through Envoy (one HTTP/1.1 connection each)"
    return many_outcome(
        ctx,
        name,
        f"Streaming {tasks} tasks to {'SSE watchers via Envoy' if sse else 'gRPC watchers'}",
        f"one SDK worker process (`await ctx.output()` per chunk), {how}",
        streams,
        ends,
        usage,
        {task_id: wrote[task_id] for task_id in ids if task_id in wrote},
    )


async def stream_many(ctx: Context) -> list[Outcome]:
    """Over gRPC, then over SSE; one failing does not keep the other from running."""
    outcomes = []
    for sse in (False, True):
        try:
            outcomes.append(await ours(ctx, sse=sse))
        except Exception as error:
            traceback.print_exc()
            name, how = ("stream_many_sse", "SSE watchers via Envoy") if sse else ("stream_many", "gRPC watchers")
            reason = f"{type(error).__name__}: {error}"[:500]
            outcomes.append(Outcome(name, f"Streaming to {how}", status="failed", reason=reason))
    return outcomes
