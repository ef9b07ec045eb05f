"""The benchmark harness runs end to end in quick mode: every workload completes and produces
numbers. No timing is asserted (CI machines are shared and noisy); docs/benchmarks.md holds the
figures of a full run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What `python -m bench --quick` runs, by outcome name; the peers may be skipped, with a reason.
EXPECTED = [
    "echo",
    "submit_grpc",
    "submit_rest",
    "e2e",
    "e2e_batch",
    "submit_grpc_metrics_off",
    "submit_grpc_metrics_on",
    "e2e_metrics_off",
    "e2e_metrics_on",
    "huey",
    "a2a",
    "latency_500",
    "isolation_unloaded",
    "isolation",
    "broadcast_1000",
    "fanout_1000",
    "stream_one",
    "relay",
    "relay_one",
    "stream_many",
    "stream_many_sse",
]
PEERS = {"huey", "a2a"}
HEADLINE = {
    "echo": "rate",
    "submit_grpc": "rate",
    "submit_rest": "rate",
    "e2e": "rate",
    "e2e_batch": "rate",
    "submit_grpc_metrics_off": "rate",
    "submit_grpc_metrics_on": "paired_rate_ratio",
    "e2e_metrics_off": "rate",
    "e2e_metrics_on": "paired_rate_ratio",
    "huey": "rate",
    "a2a": "rate",
    "latency_500": "dispatch_p99_ms",
    "isolation_unloaded": "p99_ms",
    "isolation": "p99_ms",
    "broadcast_1000": "reach_all_ms",
    "fanout_1000": "kb_per_stream",
    "stream_one": "rate",
    "relay": "rate",
    "relay_one": "rate",
    "stream_many": "rate",
    "stream_many_sse": "rate",
}

# Headlines that may truly be 0, with the figure that shows the workload ran: a task starts in
# its Submit's own write when a worker has room, and can reach the worker before the client has
# its answer, so a quiet run's dispatch p99 rounds to 0.0 ms.
MAY_BE_ZERO = {"latency_500": "submit_rate"}


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_quick_bench_completes_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=250,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(out.read_text())
    workloads = report["workloads"]
    assert sorted(workloads) == sorted(EXPECTED), done.stderr[-3000:]
    for name, outcome in workloads.items():
        if outcome["status"] == "skipped":
            assert name in PEERS, f"{name} was skipped: {outcome['reason']}"
            assert outcome["reason"], f"{name} was skipped without a reason"
            assert f"{outcome['title']}" in done.stdout and "SKIPPED" in done.stdout
            continue
        assert outcome["status"] == "ok", f"{name}: {outcome['status']}: {outcome['reason']}"
        metrics = outcome["metrics"]
        assert metrics, f"{name} produced no numbers"
        assert all(isinstance(v, int | float) for v in metrics.values()), metrics
        value = metrics[HEADLINE[name]]
        if name in MAY_BE_ZERO:
            assert math.isfinite(value) and value >= 0 and metrics[MAY_BE_ZERO[name]] > 0, (name, metrics)
        else:
            assert math.isfinite(value) and value > 0, (name, metrics)
    assert report["meta"]["mode"] == "quick"
    assert {t["target"] for t in report["targets"]}, "no targets were evaluated"
    assert "| Figure |" in done.stdout, done.stdout
