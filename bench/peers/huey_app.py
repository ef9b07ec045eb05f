"""The huey peer's application, as its consumer imports it: `bench.peers.huey_app.huey`, over
the database file named by BENCH_HUEY_DB. The harness builds its own instance with `make_huey`
(this module is for the consumer process only: importing it opens the database)."""

from __future__ import annotations

import os
import time
from typing import Any

from huey import SqliteHuey  # type: ignore[import-untyped]


def finish(index: int) -> float:
    """The task: nothing to do, as with the bench's worker; its result is when it ran (epoch s)."""
    return time.time()


def make_huey(path: str) -> tuple[SqliteHuey, Any]:
    """A SqliteHuey on `path` and the `finish` task registered on it (same task name everywhere)."""
    # fsync=True is synchronous=FULL, as agenttasks commits: the same durability on both sides.
    instance = SqliteHuey("bench", filename=path, fsync=True)
    return instance, instance.task()(finish)


if __name__ != "__main__" and "BENCH_HUEY_DB" in os.environ:
    huey, task = make_huey(os.environ["BENCH_HUEY_DB"])
