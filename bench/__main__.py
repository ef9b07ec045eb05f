"""`python -m bench`: run every workload, print the table, write the JSON.

python -m bench                 # the full run (several minutes)
python -m bench --quick         # a few seconds per workload (CI)
python -m bench --only submit_grpc,e2e --profile bench/results/profile
python -m bench --db postgresql://postgres@127.0.0.1:5432/test --replicas 2   # also on PostgreSQL
python -m bench --only metrics --tasks 5000   # what metrics cost: Submit and end to end, off vs on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import loadgen, report, target
from bench.outcome import Outcome
from bench.peers.a2a_peer import a2a_peer
from bench.peers.huey_peer import huey_peer
from bench.peers.pgqueuer_peer import pgqueuer_peer
from bench.plan import FULL, QUICK, Context, Plan
from bench.postgres import Postgres, is_postgres, shown
from bench.profiling import summarise
from bench.workloads.ceiling import echo
from bench.workloads.e2e import end_to_end, end_to_end_batched, end_to_end_watched
from bench.workloads.fanout import fan_out
from bench.workloads.isolation import isolation
from bench.workloads.latency import latency
from bench.workloads.metrics_overhead import metrics_overhead
from bench.workloads.on_postgres import on_postgres
from bench.workloads.relay import bare_relay
from bench.workloads.stream_many import stream_many
from bench.workloads.stream_one import stream_one
from bench.workloads.submit import submit_grpc, submit_rest

Workload = Callable[[Context], Awaitable[list[Outcome]]]

# In the order they run; each starts (and stops) every process it needs.
WORKLOADS: dict[str, tuple[Workload, str]] = {
    "echo": (echo, "gRPC echo ceiling (baseline of Submit)"),
    "submit_grpc": (submit_grpc, "Submit over gRPC, durable, 64 in flight"),
    "submit_rest": (submit_rest, "Submit over REST through Envoy"),
    "e2e": (end_to_end, "N tasks submitted while one worker process completes them"),
    "e2e_pg": (on_postgres(end_to_end), "end to end on PostgreSQL (--db)"),
    "e2e_pg_replicas": (
        on_postgres(end_to_end, replicas=True),
        "end to end on PostgreSQL, --replicas servers, Submits spread, a worker on each",
    ),
    "e2e_batch": (end_to_end_batched, "end to end, tasks submitted 100 at a time with BatchSubmit"),
    "e2e_watch": (end_to_end_watched, "end to end with one WatchTask per task (--watch)"),
    "metrics": (metrics_overhead, "Submit and end to end with Prometheus metrics off and on, alternated"),
    "huey": (huey_peer, "peer: huey with SqliteHuey, same N tasks"),
    "a2a": (a2a_peer, "peer: A2A Python SDK with its SQLite task store, same N tasks"),
    "pgqueuer": (pgqueuer_peer, "peer: pgqueuer on the same PostgreSQL (--db), same N tasks"),
    "latency": (latency, "dispatch and cancel latency at each of --rates tasks/s"),
    "isolation": (isolation, "a quiet tenant's unary p99, alone and while another tenant floods (default limits)"),
    "isolation_pg": (on_postgres(isolation), "the same isolation workload on PostgreSQL (--db)"),
    "latency_pg": (on_postgres(latency), "dispatch and cancel latency on PostgreSQL (--db)"),
    "latency_pg_replicas": (
        on_postgres(latency, replicas=True),
        "dispatch and cancel latency on PostgreSQL, --replicas servers, a worker on each",
    ),
    "fanout": (fan_out, "watch fan-out vs a bare grpc.aio broadcast"),
    "fanout_pg": (on_postgres(fan_out), "watch fan-out on PostgreSQL (--db), against fanout on SQLite"),
    "stream_one": (stream_one, "one task streams 1 MiB in 32-byte chunks to one watcher"),
    "relay": (bare_relay, "bare grpc.aio relay: the loads of stream_many and of stream_one (their baselines)"),
    "stream_many": (stream_many, "many tasks stream paced chunks, one watcher each: gRPC, then SSE via Envoy"),
}
RESULTS = Path(__file__).resolve().parent / "results"
NEEDS_POSTGRES = {
    "e2e_pg",
    "e2e_pg_replicas",
    "pgqueuer",
    "latency_pg",
    "latency_pg_replicas",
    "fanout_pg",
    "isolation_pg",
}
NEEDS_REPLICAS = {"e2e_pg_replicas", "latency_pg_replicas"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark agenttasks against same-run baselines and peers.",
        epilog="workloads: " + "; ".join(f"{name}: {text}" for name, (_, text) in WORKLOADS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="short run: small N, 1,000 watchers, ~1.5 s loops")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    parser.add_argument("--only", help="comma-separated workloads to run (default: all)")
    parser.add_argument("--tasks", type=int, help="N of the end-to-end workload and the peers")
    parser.add_argument("--seconds", type=float, help="measured seconds of each closed loop")
    parser.add_argument("--rates", help="comma-separated tasks/s of the latency workload (default 500,100; quick 500)")
    parser.add_argument("--watchers", help="comma-separated watcher counts of the fan-out workload")
    parser.add_argument("--watch", action="store_true", help="also run end to end with one WatchTask per task")
    parser.add_argument("--rounds", type=int, help="rounds of metrics off and on in the metrics workload (3; quick 1)")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server during Submit, end to end, latency and streaming, into this dir"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="the servers' log format; json also writes an access line per call (to the process log file)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (databases, process logs)")
    parser.add_argument(
        "--db",
        metavar="postgresql://USER@HOST:PORT/DBNAME",
        help="also run end to end, latency and fan-out on this PostgreSQL, and pgqueuer beside them; each "
        "workload gets a fresh database DBNAME_bench_PID_WORKLOAD, dropped afterwards",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="with --db: also run end to end and latency on N serve replicas"
    )
    args = parser.parse_args(argv)
    if args.db is not None and not is_postgres(args.db):
        parser.error("--db takes a postgresql:// URL (the SQLite workloads always run)")
    if args.replicas < 1 or (args.replicas > 1 and args.db is None):
        parser.error("--replicas N (N >= 1) needs --db postgresql://...")
    return args


def plan_for(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.tasks:
        plan = plan.but(tasks=args.tasks)
    if args.seconds:
        plan = plan.but(seconds=args.seconds)
    if args.rates:
        plan = plan.but(rates=tuple(float(r) for r in args.rates.split(",")))
    if args.watchers:
        plan = plan.but(watchers=tuple(int(w) for w in args.watchers.split(",")))
    if args.rounds:
        plan = plan.but(overhead_rounds=args.rounds)
    return plan.but(watch=args.watch, replicas=args.replicas)


def selected(args: argparse.Namespace, plan: Plan) -> list[str]:
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in WORKLOADS]
        if unknown:
            raise SystemExit(f"unknown workloads: {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
        if args.db is None and (needing := [name for name in names if name in NEEDS_POSTGRES]):
            raise SystemExit(f"{', '.join(needing)} run on PostgreSQL: give --db postgresql://user@host:port/dbname")
        if plan.replicas == 1 and (needing := [name for name in names if name in NEEDS_REPLICAS]):
            raise SystemExit(f"{', '.join(needing)} compare replicas with one: give --replicas N (N >= 2)")
        return names
    return [
        name
        for name in WORKLOADS
        if (name != "e2e_watch" or plan.watch)
        and (name not in NEEDS_POSTGRES or args.db is not None)
        and (name not in NEEDS_REPLICAS or plan.replicas > 1)
    ]


async def run_all(names: list[str], ctx: Context) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for name in names:
        workload, text = WORKLOADS[name]
        print(f"[bench] {name}: {text} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            async with asyncio.timeout(ctx.plan.limit_seconds * 2):
                results = await workload(ctx)
        except Exception as error:
            traceback.print_exc()
            results = [Outcome(name, text, status="failed", reason=f"{type(error).__name__}: {error}"[:500])]
        for outcome in results:
            outcomes[outcome.name] = outcome
            print(f"[bench]   {outcome.name}: {outcome.status} {outcome.reason} {outcome.metrics}", file=sys.stderr)
        print(f"[bench]   ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return outcomes


def profile_summary(outcomes: dict[str, Outcome]) -> str:
    parts = []
    for o in outcomes.values():
        profile = o.details.get("profile")
        if not profile:
            continue
        if "error" in profile:
            parts.append(f"### {o.name}\n\n{profile['error']}")
            continue
        summary = summarise(Path(profile["raw"]).read_text(), 20)
        threads = ", ".join(f"{name} {share:.0%}" for name, share in summary["threads"])
        leaf = "\n".join(f"| {share:.1%} | `{frame}` |" for frame, share in summary["self"])
        ours = [(f, s) for f, s in summary["inclusive"] if "agenttasks/" in f][:20]
        inclusive = "\n".join(f"| {share:.1%} | `{frame}` |" for frame, share in ours)
        parts.append(
            f"### {o.name} ({summary['samples']} samples; threads: {threads})\n\n"
            f"Self time (leaf frames):\n\n| share | frame |\n|---|---|\n{leaf}\n\n"
            f"Inclusive time, agenttasks frames:\n\n| share | frame |\n|---|---|\n{inclusive}"
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = plan_for(args)
    names = selected(args, plan)
    target.SERVER_ENV["AGENTTASKS_LOG_FORMAT"] = args.log_format
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    postgres = Postgres(args.db, keep=args.keep) if args.db else None
    meta = {"mode": plan.mode, "plan": {k: getattr(plan, k) for k in plan.__slots__}, **report.machine()}
    meta["log_format"] = args.log_format
    if postgres is not None:
        try:
            meta["postgres"] = postgres.describe()
        except Exception as error:
            raise SystemExit(f"cannot use the PostgreSQL of --db {shown(args.db)}: {error}") from None
        if stale := postgres.stale():
            print(f"[bench] left by runs that were killed (drop them by hand): {', '.join(stale)}", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix="agenttasks-bench-"))
    ctx = Context(plan, scratch, args.profile, keep=args.keep, postgres=postgres)
    meta["started"] = datetime.now(UTC).isoformat(timespec="seconds")
    # SIGTERM unwinds like Ctrl-C, so the databases of the run are dropped on the way out.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcomes = loadgen.run(run_all(names, ctx))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"[bench] scratch kept in {scratch}", file=sys.stderr)
            if postgres is not None and postgres.made:
                print(f"[bench] databases kept: {', '.join(sorted(postgres.made))}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            if postgres is not None and (left := postgres.sweep()):
                print(f"[bench] dropped databases left by the run: {', '.join(left)}", file=sys.stderr)
    doc = report.document(outcomes, meta)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    paths = [RESULTS / f"{plan.mode}-{stamp}.json"] + ([args.json] if args.json else [])
    for path in paths:
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\n{report.machine_line(meta)}\n")
    print(report.figures_table(outcomes))
    print()
    print(report.load_table(outcomes))
    if per_task := report.cpu_per_task_table(outcomes):
        print()
        print(per_task)
    if projection := report.projection(outcomes):
        print()
        print(projection)
    if args.profile is not None:
        summary = profile_summary(outcomes)
        (args.profile / "summary.md").write_text(summary + "\n")
        print("\n" + summary)
    print(f"\n[bench] JSON: {', '.join(str(p) for p in paths)}")
    return 1 if any(o.status == "failed" for o in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
