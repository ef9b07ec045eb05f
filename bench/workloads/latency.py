"""Dispatch and cancel latency at a stated load.

Tasks are submitted open-loop at `rate` per second (each rate of the plan in turn, on a fresh
server) (not waiting for answers) to one worker
process. Every other task (`cancel_fraction`) says `hold`: the worker keeps it until the client
cancels it, `cancel_after` seconds after Submit answered; the rest complete at once. So the load
is `rate` tasks/s, half of them completed by the worker and half cancelled by the client.

- dispatch latency: Submit answered (client clock) -> the task reached the worker's handler;
- cancel latency: Cancel answered (client clock) -> the cancel reached the worker's handler.

Both clocks are CLOCK_MONOTONIC on one machine. A worker can hear before the client does (the
server pushes and answers at the same moment); such latencies count as 0.
"""

from __future__ import annotations

import asyncio
import json
import math

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.target import Cluster
from bench.worker import HOLD
from bench.workloads.common import submit_request, window

MAX_UNANSWERED = 2000
SETTLE_SECONDS = 1.0


def _clamped(deltas: list[int]) -> list[int]:
    return [max(0, d) for d in deltas]


async def latency(ctx: Context) -> list[Outcome]:
    return [await _at(ctx, rate) for rate in ctx.plan.rates]


async def _at(ctx: Context, rate: float) -> Outcome:
    plan = ctx.plan
    workdir = ctx.scratch(f"latency-{rate:g}")
    count = round(rate * plan.latency_seconds)
    every = max(1, round(1 / plan.cancel_fraction)) if plan.cancel_fraction > 0 else 0
    acked: dict[str, int] = {}
    cancel_acked: dict[str, int] = {}
    submit_ns: list[int] = []
    errors: list[str] = []
    cancelled_queued = 0
    async with Cluster(ctx, workdir, f"latency_{rate:g}") as cluster:
        # Submit calls go round the replicas; a task is cancelled through the replica that took it.
        apis = [server.api() for server in cluster.servers]
        agent_id = cluster.agent_id
        hold, go = submit_request(agent_id, HOLD), submit_request(agent_id, "go")
        async with cluster.workers(plan.capacity, record=True) as workers:

            async def fire(i: int) -> None:
                nonlocal cancelled_queued
                held = every > 0 and i % every == 0
                # Not i % replicas: with two replicas every held task would go to the first.
                api = apis[(i // every if every else i) % len(apis)]
                try:
                    t0 = loadgen.now_ns()
                    answer = await api.tasks.Submit(hold if held else go, metadata=api.metadata, timeout=30)
                    acked[answer.task_id] = t1 = loadgen.now_ns()
                    submit_ns.append(t1 - t0)
                    if not held:
                        return
                    await _sleep_until(t1 + int(plan.cancel_after * 1e9))
                    cancel = pb.CancelRequest(agent_id=agent_id, task_id=answer.task_id)
                    task = (await api.tasks.Cancel(cancel, metadata=api.metadata, timeout=30)).task
                    cancel_acked[answer.task_id] = loadgen.now_ns()
                    if not task.HasField("started_at"):
                        cancelled_queued += 1  # never reached the worker: nothing to time
                except Exception as error:
                    errors.append(f"{type(error).__name__}: {error}"[:300])

            pids = {**cluster.pids(), "worker": [worker.pid for worker in workers]}
            meter = cluster.backend_cpu()
            profile = f"latency_{rate:g}"
            async with window(ctx, pids, profile=profile, seconds=plan.latency_seconds, postgres=meter) as usage:
                started = loadgen.now_ns()
                skipped = await loadgen.paced(rate, count, plan.latency_seconds, fire, MAX_UNANSWERED)
                offered_seconds = (loadgen.now_ns() - started) / 1e9
            await _sleep_until(loadgen.now_ns() + int(SETTLE_SECONDS * 1e9))
        # The workers have stopped and written what they saw.
        assigned: dict[str, int] = {}
        told: dict[str, int] = {}
        for i in range(len(apis)):
            seen = json.loads((workdir / f"worker-record-{i}.json").read_text())
            assigned.update(seen["assigned"])
            told.update(seen["cancelled"])
    ctx.discard(workdir)
    dispatch = _clamped([assigned[t] - acked[t] for t in acked if t in assigned])
    cancel = _clamped([told[t] - cancel_acked[t] for t in cancel_acked if t in told])
    d, c = loadgen.latency_ms(dispatch), loadgen.latency_ms(cancel)
    outcome = Outcome(
        f"latency_{rate:g}",
        f"Dispatch and cancel latency at {rate:g} tasks/s",
        load=(
            f"{rate:g} tasks/s offered open-loop for {plan.latency_seconds:g} s, "
            + (
                f"one SDK worker process (capacity {plan.capacity})"
                if ctx.replicas == 1
                else f"{ctx.replicas} replicas, Submits spread over them, one SDK worker (capacity "
                f"{plan.capacity}) on each"
            )
            + f"; {plan.cancel_fraction:.0%} cancelled {plan.cancel_after * 1000:g} ms "
            f"after Submit answered, the rest completed; {'PostgreSQL' if ctx.on_postgres else 'SQLite'}"
        ),
        metrics={
            "offered_rate": rate,
            "submit_rate": round(len(acked) / offered_seconds, 1) if offered_seconds else math.nan,
            "submit_p99_ms": loadgen.latency_ms(submit_ns)["p99_ms"],
            "dispatch_p50_ms": d["p50_ms"],
            "dispatch_p99_ms": d["p99_ms"],
            "dispatch_max_ms": d["max_ms"],
            "dispatched": len(dispatch),
            "cancel_p50_ms": c["p50_ms"],
            "cancel_p99_ms": c["p99_ms"],
            "cancel_max_ms": c["max_ms"],
            "cancels_timed": len(cancel),
            "cancelled_before_dispatch": cancelled_queued,
            "skipped_starts": skipped,
            "errors": len(errors),
            "replicas": ctx.replicas,
            **usage.cpu_us_per_task(len(acked)),
            **usage.metrics,
        },
        details={**usage.details, "first_error": errors[0] if errors else ""},
    )
    if errors or not dispatch or (every and not cancel):
        outcome.status = "failed"
        outcome.reason = f"{len(errors)} errors ({errors[0] if errors else ''}); {len(dispatch)} dispatches timed"
    return outcome


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - loadgen.now_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
