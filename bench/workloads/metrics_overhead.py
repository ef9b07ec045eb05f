"""What metrics cost: Submit over gRPC and end to end with Prometheus metrics off and on, side by
side in one run (issue 16 point 4: within 5%; tracing stays off, as it is by default).

Each round runs both workloads once with metrics off and once on, on fresh servers, the order
flipped every round so that a machine getting busier or quieter over the run does not favour
either side. The figure judged is the median over the rounds of each round's own on/off ratio:
the two runs of a round are seconds apart, so a neighbour's load that comes and goes over minutes
(on this machine kind one run swings by 10-20% against the next) mostly cancels within a pair,
where a ratio of the two sides' medians keeps it. Each side's median is reported too. With metrics on the bench
scrapes /metrics every second, much more often than Prometheus usually does, so the cost of
rendering pages is in the figure too.

Beside throughput, each side reports the server's CPU time per task (per Submit call for the
Submit loop): on a shared machine throughput swings with the neighbours' load, while CPU per task
is what metrics add to the server's own work.
"""

from __future__ import annotations

import statistics

from bench.outcome import Outcome
from bench.plan import Context
from bench.target import SCRAPE_SECONDS
from bench.workloads.e2e import end_to_end
from bench.workloads.submit import submit_grpc

SIDES = {False: "off", True: "on"}


async def metrics_overhead(ctx: Context) -> list[Outcome]:
    runs: dict[tuple[str, bool], list[Outcome]] = {}
    rounds = ctx.plan.overhead_rounds
    for round_ in range(rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for kind, workload in (("submit_grpc", submit_grpc), ("e2e", end_to_end)):
            for on in order:
                (outcome,) = await workload(ctx.but(metrics=on))
                runs.setdefault((kind, on), []).append(outcome)
    titles = {"submit_grpc": "Submit over gRPC (durable)", "e2e": "End to end"}
    outcomes = []
    for (kind, on), found in runs.items():
        paired: dict[str, float] = {}
        if on:  # run i of each side is from round i: the same few seconds of the machine's life
            offs = runs[(kind, False)]
            rate_ratios = [o.metrics["rate"] / b.metrics["rate"] for o, b in zip(found, offs, strict=True)]
            cpu_ratios = [_cpu_us_per_task(o) / _cpu_us_per_task(b) for o, b in zip(found, offs, strict=True)]
            paired = {
                "paired_rate_ratio": round(statistics.median(rate_ratios), 3),
                "paired_cpu_ratio": round(statistics.median(cpu_ratios), 3),
            }
        name = f"{kind}_metrics_{SIDES[on]}"
        rates = [o.metrics["rate"] for o in found]
        cpu = [_cpu_us_per_task(o) for o in found]
        outcome = Outcome(
            name,
            f"{titles[kind]}, metrics {SIDES[on]}",
            load=f"{found[0].load}; median of {rounds} runs alternated with metrics "
            + (f"on, /metrics scraped every {SCRAPE_SECONDS:g} s" if on else "off"),
            metrics={
                "rate": round(statistics.median(rates), 1),
                "server_cpu_us_per_task": round(statistics.median(cpu)),
                "runs": len(rates),
                **paired,
            },
            details={"rates": rates, "server_cpu_us_per_task": cpu, "runs": [o.to_json() for o in found]},
        )
        failed = [o for o in found if o.status != "ok"]
        if failed:
            outcome.status, outcome.reason = "failed", f"{failed[0].name}: {failed[0].reason}"
        if on and not failed and not all(o.details.get("scrapes", 0) > 0 for o in found):
            outcome.status, outcome.reason = "failed", "metrics on, but /metrics was never scraped"
        outcomes.append(outcome)
    return outcomes


def _cpu_us_per_task(outcome: Outcome) -> float:
    """Server CPU per task: measured so by end to end, derived from cores and rate for Submit."""
    metrics = outcome.metrics
    if "server_cpu_us_per_task" in metrics:
        return float(metrics["server_cpu_us_per_task"])
    rate, cores = metrics.get("rate", 0.0), metrics.get("server_cpu", float("nan"))
    return round(cores / rate * 1e6, 1) if rate else float("nan")
