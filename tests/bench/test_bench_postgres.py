"""`python -m bench --db postgresql://... --replicas 2` in quick mode: the PostgreSQL workloads,
the replicas and the pgqueuer peer produce numbers, and every database the run made is dropped.
No timing is asserted. Skipped when the local PostgreSQL (tests/support.py) is not there."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import psycopg
import pytest

from tests.support import POSTGRES_SERVER

ROOT = Path(__file__).resolve().parents[2]
URL = f"{POSTGRES_SERVER}/test"
ONLY = "e2e_pg,e2e_pg_replicas,pgqueuer,latency_pg_replicas,isolation_pg"
HEADLINE = {
    "e2e_pg": "rate",
    "e2e_pg_r2": "rate",
    "pgqueuer": "rate",
    "latency_500_pg_r2": "dispatched",
    "isolation_unloaded_pg": "p99_ms",
    "isolation_pg": "p99_ms",
}


def _bench_databases() -> list[str]:
    with psycopg.connect(URL, autocommit=True, connect_timeout=5) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_bench\\_%'").fetchall()
    return [row[0] for row in rows]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_bench_on_postgres_with_two_replicas(tmp_path: Path) -> None:
    try:
        before = set(_bench_databases())
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {URL}: {error}")
    out = tmp_path / "quick.json"
    command = [sys.executable, "-m", "bench", "--quick", "--db", URL, "--replicas", "2", "--only", ONLY]
    run = subprocess.Popen([*command, "--json", str(out)], cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True)
    try:
        stdout, stderr = run.communicate(timeout=170)
    finally:
        run.kill()
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    report = json.loads(out.read_text())
    workloads = report["workloads"]
    assert sorted(workloads) == sorted(HEADLINE), done.stderr[-3000:]
    for name, outcome in workloads.items():
        if name == "pgqueuer" and outcome["status"] == "skipped":
            assert "pgqueuer" in outcome["reason"]
            continue
        metrics = outcome["metrics"]
        # Numbers even when a workload failed: errors of the server under test are reported, not hidden.
        assert math.isfinite(metrics[HEADLINE[name]]) and metrics[HEADLINE[name]] > 0, (name, outcome)
        if name.startswith("e2e") or name == "pgqueuer":
            assert outcome["status"] == "ok", f"{name}: {outcome['reason']}"
            assert metrics["postgres_cpu_us_per_task"] > 0, metrics
    assert report["meta"]["postgres"]["server_version"]
    assert "PROJECTION, not a measurement" in done.stdout, done.stdout[-3000:]
    # Every database of the run is gone (those of other runs beside this one may come and go:
    # the bench names its databases after its pid).
    mine = f"_bench_{run.pid}_"
    assert not [name for name in set(_bench_databases()) - before if mine in name], done.stderr[-2000:]
