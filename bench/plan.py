"""How much load each workload applies: the full run and the quick (CI) run."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.postgres import Postgres


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    seconds: float
    """Measured time of each closed loop (echo, Submit)."""
    warmup: float
    """Unmeasured time before it."""
    max_calls: int
    """Cap on the calls of one closed loop, so a very fast system still stops."""
    tasks: int
    """N, the tasks of the end-to-end workload and of each peer."""
    rates: tuple[float, ...]
    """Tasks per second offered in the latency workload: the target's load, then lighter ones."""
    latency_seconds: float
    watchers: tuple[int, ...]
    """Watcher counts of the fan-out workload."""
    concurrency: int = 64
    capacity: int = 64
    cancel_fraction: float = 0.5
    """Share of the latency workload's tasks that the client cancels (the rest complete)."""
    cancel_after: float = 0.05
    """Seconds after Submit's answer that such a task is cancelled (it is running by then)."""
    streams_per_channel: int = 1000
    fanout_rounds: int = 3
    """Events published per fan-out; the median time to reach every watcher is reported."""
    stream_chunks: int = 32_768
    """stream_one: 32-byte chunks one task writes as fast as it can (32,768: 1 MiB of output)."""
    stream_one_seconds: float = 150.0
    """stream_one: the writer stops after this long, however far it got."""
    stream_window: int = 1000
    """stream_one compares the time per chunk of its first this many chunks with its last."""
    stream_tasks: int = 200
    """stream_many and relay: tasks streaming at once, one watcher each."""
    stream_rate: float = 50.0
    """stream_many and relay: chunks per second each task writes."""
    stream_seconds: float = 20.0
    """stream_many and relay: how long each task writes (so each writes rate x seconds chunks)."""
    watch: bool = False
    """Also run end to end with one WatchTask per task."""
    replicas: int = 1
    """`--replicas N`: the replicas of the `*_pg_replicas` workloads (PostgreSQL only)."""
    isolation_seconds: float = 10.0
    """isolation: measured seconds of the quiet tenant's calls, alone and beside the flood."""
    isolation_rate: float = 100.0
    """isolation: the quiet tenant's calls per second."""
    isolation_watches: int = 3000
    """isolation: open WatchTask streams of the flooding tenant."""
    limit_seconds: float = 600.0
    """Hard limit of one workload, setup included."""
    overhead_rounds: int = 3
    """metrics: rounds of Submit and end to end with metrics off and on, alternated."""

    def but(self, **changes: object) -> Plan:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


FULL = Plan(
    mode="full",
    seconds=10.0,
    warmup=2.0,
    max_calls=200_000,
    tasks=20_000,
    rates=(500.0, 100.0),
    latency_seconds=10.0,
    watchers=(1000, 10_000),
)
QUICK = Plan(
    mode="quick",
    seconds=1.5,
    warmup=0.5,
    max_calls=20_000,
    tasks=200,
    rates=(500.0,),
    latency_seconds=2.0,
    watchers=(1000,),
    stream_chunks=2048,
    stream_one_seconds=5.0,
    stream_window=250,
    stream_tasks=40,
    stream_seconds=3.0,
    isolation_seconds=1.0,
    isolation_watches=100,
    limit_seconds=60.0,
    overhead_rounds=1,
)


@dataclass(slots=True)
class Context:
    """What a workload gets: the plan, a scratch directory of its own, and where profiles go."""

    plan: Plan
    root: Path
    profile_dir: Path | None = None
    keep: bool = False
    """Keep scratch directories (databases, process logs) for a look afterwards."""
    postgres: Postgres | None = None
    """The PostgreSQL of `--db postgresql://...`, when given."""
    on_postgres: bool = False
    """Run the workload's servers on a fresh PostgreSQL database instead of a SQLite file."""
    replicas: int = 1
    """`agenttasks serve` processes on the workload's one database (PostgreSQL only)."""
    metrics: bool = False
    """Run the servers with Prometheus metrics on, scraped every second (the metrics workload)."""

    def but(self, **changes: object) -> Context:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def database(self, workdir: Path, name: str) -> AsyncIterator[str]:
        """The `--db` of the block's servers: a SQLite file in `workdir`, or a fresh PostgreSQL
        database named for `name`, dropped afterwards."""
        if not self.on_postgres:
            yield str(workdir / "agenttasks.db")
            return
        if self.postgres is None:
            raise RuntimeError("this workload runs on PostgreSQL: give --db postgresql://user@host:port/dbname")
        async with self.postgres.database(name) as url:
            yield url

    def scratch(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def discard(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)
