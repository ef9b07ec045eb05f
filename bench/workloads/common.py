"""Pieces the workloads share: the Submit request, and a measured closed loop with CPU accounting
(and py-spy, when profiling) around exactly the measured window."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.plan import Context
from bench.postgres import BackendCpu
from bench.procs import CpuSample, cpu_sample, cpu_used
from bench.profiling import Profile

MESSAGE = "summarise the quarterly report"


def submit_request(agent_id: str, message: str = MESSAGE) -> pb.SubmitRequest:
    return pb.SubmitRequest(agent_id=agent_id, message=message)


@dataclass(slots=True)
class Usage:
    """CPU used by the watched processes during a window, filled in when the window closes."""

    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    """How long the window lasted."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds each role used in the window (for CPU per task or per chunk)."""

    def cpu_us_per(self, role: str, count: int) -> float:
        """Microseconds of `role`'s CPU per one of `count` things done in the window."""
        return round(self.cpu_seconds[role] * 1e6 / count, 1) if count else math.nan

    def cpu_us_per_task(self, count: int) -> dict[str, float]:
        """`{role}_cpu_us_per_task` of every role measured (server, worker, postgres, client, ...)."""
        return {f"{role}_cpu_us_per_task": self.cpu_us_per(role, count) for role in self.cpu_seconds}


def _sample(pids: Sequence[int]) -> CpuSample:
    """One CPU sample of several processes (the replicas of a role), per thread name summed."""
    samples = [cpu_sample(pid) for pid in pids]
    by_thread: dict[str, float] = {}
    for sample in samples:
        for name, seconds in sample.by_thread.items():
            by_thread[name] = by_thread.get(name, 0.0) + seconds
    return CpuSample(sum(s.total for s in samples), by_thread)


@contextlib.asynccontextmanager
async def window(
    ctx: Context,
    pids: Mapping[str, int | Sequence[int]],
    *,
    profile: str | None = None,
    seconds: float = 0.0,
    postgres: BackendCpu | None = None,
) -> AsyncIterator[Usage]:
    """Measure the CPU of `pids` ({role: pid or pids}; the harness is added as `client`) over
    the block, and with `postgres` that of the PostgreSQL backends serving the workload's
    database (roles `postgres` and `pg_shared`).

    With profiling on and `profile` named, py-spy records the (first) server meanwhile (for at
    most `seconds`).
    """
    watched = {role: [pid] if isinstance(pid, int) else list(pid) for role, pid in pids.items()}
    watched["client"] = [os.getpid()]
    usage = Usage()
    if postgres is not None:
        await postgres.start()
    before = {role: _sample(group) for role, group in watched.items()}
    t0 = loadgen.now_ns()
    profiler = (
        Profile(watched["server"][0], seconds, ctx.profile_dir, profile)
        if ctx.profile_dir is not None and profile is not None
        else None
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            if profiler is not None:
                await stack.enter_async_context(profiler)
            yield usage
            elapsed = usage.seconds = (loadgen.now_ns() - t0) / 1e9
            for role, group in watched.items():
                after = _sample(group)
                usage.cpu_seconds[role] = after.total - before[role].total
                cores, threads = cpu_used(before[role], after, elapsed)
                usage.metrics[f"{role}_cpu"] = round(cores, 2)
                usage.details[f"{role}_cpu_by_thread"] = threads
            if postgres is not None:
                for role, used in (await postgres.stop()).items():
                    usage.cpu_seconds[role] = used
                    usage.metrics[f"{role}_cpu"] = round(used / elapsed, 2) if elapsed else math.nan
                usage.metrics["postgres_backends"] = postgres.backends()
    finally:
        if postgres is not None:
            await postgres.stop()
    if profiler is not None:
        usage.details["profile"] = {"raw": str(profiler.raw), **profiler.summary()}


async def measured_loop(
    ctx: Context, call: loadgen.Call, pids: Mapping[str, int], profile: str | None = None
) -> tuple[loadgen.LoopResult, Usage]:
    """Warm up, then the measured closed loop of the plan, with CPU (and profile) of that window."""
    plan = ctx.plan
    await loadgen.closed_loop(call, concurrency=plan.concurrency, seconds=plan.warmup, max_calls=plan.max_calls)
    async with window(ctx, pids, profile=profile, seconds=plan.seconds) as usage:
        result = await loadgen.closed_loop(
            call, concurrency=plan.concurrency, seconds=plan.seconds, max_calls=plan.max_calls
        )
    return result, usage


def closed_load(ctx: Context, what: str) -> str:
    return f"{what}, {ctx.plan.concurrency} in flight, {ctx.plan.seconds:g} s after {ctx.plan.warmup:g} s warmup"
