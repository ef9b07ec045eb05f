"""The PostgreSQL variants of the workloads that have one (end to end, latency, fan-out): the
same workload, its servers on a fresh PostgreSQL database of `--db` instead of a SQLite file, its
outcomes renamed `NAME_pg` (one replica) or `NAME_pg_rN` (`--replicas N`), so that a run holds
both and the report can divide one by the other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.outcome import Outcome
from bench.plan import Context

Workload = Callable[[Context], Awaitable[list[Outcome]]]


def suffix(replicas: int) -> str:
    return "_pg" if replicas == 1 else f"_pg_r{replicas}"


def on_postgres(workload: Workload, *, replicas: bool = False) -> Workload:
    """`workload` on PostgreSQL with one replica, or with `plan.replicas` of them."""

    async def run(ctx: Context) -> list[Outcome]:
        count = ctx.plan.replicas if replicas else 1
        outcomes = await workload(ctx.but(on_postgres=True, replicas=count))
        for outcome in outcomes:
            outcome.name += suffix(count)
            outcome.title += " on PostgreSQL" + (f", {count} replicas" if count > 1 else "")
        return outcomes

    return run
