"""The load generator's machinery, shared by every workload so that ratios compare like with like.

`closed_loop` keeps a fixed number of calls in flight (each slot starts its next call when the
last one answers), for a fixed time or count; the echo ceiling and Submit use exactly the same
loop, channel setup and event loop. Time is CLOCK_MONOTONIC in nanoseconds (`now_ns`), which every
process on the machine shares, so the harness can compare its timestamps with a worker's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # A channel of its own (not shared with other channels to the same address), so separate
    # channels really are separate HTTP/2 connections.
    ("grpc.use_local_subchannel_pool", 1),
]


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (a Python gRPC client needs it to drive more than
    ~2.4k calls/s on this machine kind), else on the default loop."""
    try:
        import uvloop
    except ImportError:
        with asyncio.Runner() as runner:
            return runner.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    values = sorted(samples_ns)
    return {
        "p50_ms": round(percentile(values, 50) / 1e6, 3),
        "p99_ms": round(percentile(values, 99) / 1e6, 3),
        "max_ms": round(values[-1] / 1e6, 3) if values else math.nan,
    }


@dataclass(slots=True)
class LoopResult:
    """What a measured loop did: completed calls, errors, and per-call latency (measured calls only)."""

    calls: int
    errors: int
    seconds: float
    latencies_ns: list[int]
    first_error: str = ""
    per_second: list[int] = field(default_factory=list)
    """Calls answered in each second of the loop: shows a rate that drifts as state grows."""

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        return {
            "rate": round(self.rate, 1),
            "calls": self.calls,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            **latency_ms(self.latencies_ns),
        }


Call = Callable[[int], Awaitable[object]]
"""One request; gets the loop slot's index (0..concurrency-1), e.g. to pick that slot's connection."""


async def closed_loop(
    call: Call,
    *,
    concurrency: int,
    seconds: float,
    max_calls: int,
) -> LoopResult:
    """`concurrency` calls in flight until `seconds` have passed or `max_calls` calls were started.

    A failed call counts as an error (the first error's text is kept) and its slot goes on.
    """
    start = now_ns()
    stop_at = start + int(seconds * 1e9)
    latencies: list[int] = []
    per_second = [0] * (math.ceil(seconds) + 1)
    errors = 0
    first_error = ""
    started = 0

    async def slot(index: int) -> None:
        nonlocal errors, first_error, started
        while True:
            t0 = now_ns()
            if t0 >= stop_at or started >= max_calls:
                return
            started += 1
            try:
                await call(index)
            except Exception as error:
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {error}"[:300]
                continue
            t1 = now_ns()
            latencies.append(t1 - t0)
            per_second[min(len(per_second) - 1, (t1 - start) // 1_000_000_000)] += 1

    await asyncio.gather(*(slot(i) for i in range(concurrency)))
    return LoopResult(len(latencies), errors, (now_ns() - start) / 1e9, latencies, first_error, per_second)


async def paced(
    rate: float, count: int, seconds: float, fire: Callable[[int], Coroutine[Any, Any, None]], limit: int
) -> int:
    """Open loop: start `fire(i)` at `rate` per second regardless of answers, for `count` starts
    or `seconds`, with at most `limit` unanswered (a start that would exceed it is skipped and
    counted). Waits for every started call; returns how many starts were skipped."""
    interval = 1e9 / rate
    t0 = now_ns()
    pending: set[asyncio.Task[None]] = set()
    skipped = 0
    for i in range(count):
        due = t0 + int(i * interval)
        if due - t0 > seconds * 1e9:
            break
        delay = (due - now_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= limit:
            skipped += 1
            continue
        task = asyncio.create_task(fire(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return skipped
