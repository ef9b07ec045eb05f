"""The service's own counters and histograms, kept as plain numbers and rendered on a scrape.

Why not prometheus_client's Counter and Histogram: each of their updates takes a lock, and an
RPC would pay several. Everything recorded here happens on the event loop thread (hub listeners,
the gate, the writers' flush coroutines, webhook attempts), so plain ints and lists suffice and
an update costs an addition. `metric_families` turns them into Prometheus families when
/metrics is read, on the same thread.

Counts are of what *this server* did: with replicas each counts the changes it committed, and
never a change it only heard of from another server (`EventHub.relaying`), so the replicas'
series sum to the store's totals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

import grpc

from agenttasks.core import lifecycle
from agenttasks.core.model import EventType, Task, TaskEvent, TaskStatus
from agenttasks.core.watch import EventHub

# Bucket bounds in seconds (or writes, for batch sizes), chosen for the questions the operator
# guide asks: sub-millisecond to seconds for calls and writes, minutes to a day for tasks.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
RUN_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 86400)
WEBHOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

# Reasons a task ends or goes back to the queue that the server itself gives. A worker may fail
# a task with any UPPER_SNAKE code of its own: those are counted as WORKER_OTHER, so the label
# set stays bounded whatever workers send.
KNOWN_REASONS = frozenset(
    {
        "",
        lifecycle.CANCELLED_BY_CLIENT,
        lifecycle.AGENT_DELETED,
        lifecycle.LEASE_LOST,
        lifecycle.TIMEOUT,
        lifecycle.INPUT_TIMEOUT,
        lifecycle.WORKER_ERROR,
    }
)
WORKER_OTHER = "WORKER_OTHER"


class Histogram:
    """Counts per bucket (the last is +Inf) and the sum; cumulative only when rendered."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le is <=).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as Prometheus wants them, ending with +Inf."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


def reason_label(reason: str) -> str:
    return reason if reason in KNOWN_REASONS else WORKER_OTHER


# Looked up once: the hub listener runs for every change, and enum attribute and property
# lookups (EventType.STATUS, status.terminal, status.value) were most of its cost.
_CREATED, _STATUS = EventType.CREATED, EventType.STATUS
_QUEUED, _RUNNING = TaskStatus.QUEUED, TaskStatus.RUNNING
_ENDED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Metrics:
    """The numbers one server records as it works; hooks for the parts that do the work."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self.submitted = 0
        self.finished: Counter[tuple[TaskStatus, str]] = Counter()  # (final status, reason label)
        self.requeued: Counter[str] = Counter()  # reason
        self.queue_wait = Histogram(WAIT_BUCKETS)
        self.run_time: dict[TaskStatus, Histogram] = {s: Histogram(RUN_BUCKETS) for s in sorted(_ENDED)}
        self.rpcs: Counter[tuple[str, grpc.StatusCode]] = Counter()  # (method path, code)
        self.rpc_seconds: dict[str, Histogram] = {}  # method path -> unary call latency
        self.write_seconds = Histogram(WRITE_BUCKETS)
        self.batch_seconds = Histogram(WRITE_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.webhook_attempts: Counter[str] = Counter()  # outcome
        self.webhook_seconds = Histogram(WEBHOOK_BUCKETS)
        hub.listen(self.on_change)

    # --- hooks ---

    def on_change(self, task: Task, events: list[TaskEvent]) -> None:
        """Hub listener: count what a change committed here did to its task."""
        if self._hub.relaying:  # another server made this change and counts it itself
            return
        for event in events:
            kind = event.type
            if kind is _CREATED:
                self.submitted += 1
            elif kind is _STATUS:
                self._status(task, event)

    def _status(self, task: Task, event: TaskEvent) -> None:
        status = event.status
        if status in _ENDED:
            reason = event.data.get("reason", "")
            self.finished[(status, reason if reason in KNOWN_REASONS else WORKER_OTHER)] += 1
            # Only a task that ran has a run time: one cancelled while queued did not run.
            if (started := task.started_at) is not None:
                self.run_time[status].observe((event.time - started).total_seconds())
        elif status is _QUEUED:
            self.requeued[reason_label(event.data.get("reason", ""))] += 1
        elif status is _RUNNING and event.data.get("attempt") == 1:
            # A first start (a requeued attempt's queued time is not known here: the requeue may
            # have happened on another server). The wait is from Submit to the start.
            self.queue_wait.observe((event.time - task.created_at).total_seconds())

    def rpc(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        """A call through the gate ended with `code`; `seconds` for unary calls (None for streams)."""
        self.rpcs[(method, code)] += 1  # the code's name only when rendered: .name is not free
        if seconds is not None:
            histogram = self.rpc_seconds.get(method)
            if histogram is None:  # methods are the service's own: a bounded set
                histogram = self.rpc_seconds[method] = Histogram(RPC_BUCKETS)
            histogram.observe(seconds)

    def store_batch(self, began: float, committed: float, queued: Sequence[float]) -> None:
        """The store writer committed a batch: when it began and ended, and when each of its
        writes was submitted (all `time.perf_counter()`)."""
        self.batch_seconds.observe(committed - began)
        self.batch_size.observe(len(queued))
        observe = self.write_seconds.observe
        for at in queued:
            observe(committed - at)

    def webhook_attempt(self, outcome: str, seconds: float) -> None:
        self.webhook_attempts[outcome] += 1
        self.webhook_seconds.observe(seconds)
