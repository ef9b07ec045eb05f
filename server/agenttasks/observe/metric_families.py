"""What a scrape of /metrics shows: the recorded numbers, live views, and store-wide figures.

Three kinds of series, told apart in docs/operations.md:
- per server, counted as it works (`metrics.Metrics`): sum them over replicas;
- per server, read from what it holds now (connected workers, their free places, open watch
  streams): sum them over replicas;
- store-wide, read from the store (tasks queued and running per agent, the webhook backlog),
  named `agenttasks_store_*`: every replica shows the same figure, so take `max` over replicas,
  never `sum`. They come from one grouped query, cached for a second so that several scrapers
  (or several replicas scraped at once) do not each cost the database a query per scrape.

Per-agent series carry `tenant` and `agent_id` for at most `agent_series` agents (the busiest
by open tasks and connected workers); the rest are summed under tenant="_other",
agent_id="_other", so the number of series is bounded however many agents exist.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agenttasks.core.call_slots import CallSlots
from agenttasks.core.dispatch import Dispatcher
from agenttasks.core.model import TaskStatus
from agenttasks.core.ports import ReadTx, Store
from agenttasks.core.watch import EventHub
from agenttasks.observe.metrics import Histogram, Metrics

log = logging.getLogger(__name__)

OTHER = "_other"
STORE_FIGURES_MAX_AGE = 1.0
# Failing webhook endpoints: the hosts of the URLs with the most failed pending deliveries are
# read from this many URLs, and this many hosts get a series of their own.
FAILING_URLS_READ = 1000
FAILING_HOST_SERIES = 10
AgentKey = tuple[str, str]
OPEN_STATUSES = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.AWAITING_INPUT)


class StoreFigures:
    """Store-wide figures, read at most once per `max_age` seconds (on a scrape)."""

    def __init__(self, store: Store, max_age: float = STORE_FIGURES_MAX_AGE) -> None:
        self._store = store
        self.max_age = max_age  # tests set 0 to read the store on every scrape
        self._read_at = float("-inf")
        self.open_tasks: dict[tuple[str, str, str], int] = {}  # (tenant, agent_id, status) -> n
        self.pending_deliveries = 0
        self.failing_hosts: Counter[str] = Counter()  # host[:port] -> pending deliveries that failed
        self.ok = False

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < self.max_age:
            return

        def read(tx: ReadTx) -> tuple[list[tuple[str, str, str, int]], int, list[tuple[str, int]]]:
            return tx.open_task_counts(), tx.pending_delivery_count(), tx.failing_delivery_urls(FAILING_URLS_READ)

        try:
            counts, pending, failing = await self._store.read(read)
        except Exception as error:  # a scrape must still answer: without these, and says so
            log.warning("metrics: cannot read store-wide figures: %s", error)
            self.ok = False
            return
        self.open_tasks = {(tenant, agent, status): n for tenant, agent, status, n in counts}
        self.pending_deliveries = pending
        self.failing_hosts = failing_hosts(failing, FAILING_HOST_SERIES)
        self.ok = True
        self._read_at = time.monotonic()


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class ServiceCollector(Collector):
    """A prometheus_client collector over one server's numbers; see the module docstring."""

    def __init__(
        self,
        metrics: Metrics,
        dispatcher: Dispatcher,
        hub: EventHub,
        figures: StoreFigures,
        agent_series: int,
        slots: CallSlots | None = None,
    ) -> None:
        self._metrics = metrics
        self._slots = slots
        self._dispatcher = dispatcher
        self._hub = hub
        self._figures = figures
        self._agent_series = agent_series

    def collect(self) -> Iterator[Metric]:
        yield from self._tasks()
        yield from self._rpcs()
        yield from self._store()
        yield from self._webhooks()
        yield from self._agents()
        watches = GaugeMetricFamily(
            "agenttasks_watch_streams_open", "WatchTask streams open on this server (REST SSE ones included)."
        )
        watches.add_metric([], self._hub.subscription_count())
        yield watches
        if (slots := self._slots) is not None:
            yield GaugeMetricFamily(
                "agenttasks_calls_waiting",
                "Unary calls waiting now for one of their tenant's running slots.",
                slots.waiting(),
            )
            yield CounterMetricFamily(
                "agenttasks_calls_waited",
                "Unary calls that waited for a running slot of their tenant, while another tenant was calling.",
                slots.waited,
            )
            yield CounterMetricFamily(
                "agenttasks_calls_refused",
                "Unary calls refused with TOO_MANY_CALLS: their tenant's line of waiting calls was full.",
                slots.refused,
            )
            yield CounterMetricFamily(
                "agenttasks_calls_paused_seconds",
                "Seconds tenants with calls waiting paused between them, to keep their share of the server "
                "(AGENTTASKS_MAX_TIME_SHARE_PER_TENANT) while another tenant was calling.",
                slots.paused,
            )

    def _tasks(self) -> Iterator[Metric]:
        m = self._metrics
        yield CounterMetricFamily(
            "agenttasks_tasks_submitted", "Tasks accepted by Submit and BatchSubmit on this server.", m.submitted
        )
        finished = CounterMetricFamily(
            "agenttasks_tasks_finished",
            "Tasks that reached a final status on this server, by status and reason "
            "(worker-chosen failure codes are counted as WORKER_OTHER).",
            labels=["status", "reason"],
        )
        for (status, reason), n in sorted(m.finished.items()):
            finished.add_metric([status.value, reason], n)
        yield finished
        requeued = CounterMetricFamily(
            "agenttasks_tasks_requeued",
            "Tasks put back in the queue for another attempt, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(m.requeued.items()):
            requeued.add_metric([reason], n)
        yield requeued
        yield CounterMetricFamily(
            "agenttasks_leases_expired",
            "Tasks taken back because their worker was silent past its lease (requeued, or failed "
            "with LEASE_LOST when no attempt was left); a worker that disconnects is not counted here.",
            self._dispatcher.leases_expired,
        )
        wait = HistogramMetricFamily(
            "agenttasks_task_queue_wait_seconds", "Time from Submit to a worker starting the first attempt."
        )
        _histogram(wait, [], m.queue_wait)
        yield wait
        run = HistogramMetricFamily(
            "agenttasks_task_run_seconds",
            "Time from the start of the last attempt to the final status, by status.",
            labels=["status"],
        )
        for status, histogram in m.run_time.items():
            _histogram(run, [status.value], histogram)
        yield run

    def _rpcs(self) -> Iterator[Metric]:
        m = self._metrics
        calls = CounterMetricFamily(
            "agenttasks_rpc_requests",
            "Calls handled, by service, method and gRPC status code (REST calls arrive as gRPC calls).",
            labels=["service", "method", "code"],
        )
        for (path, code), n in sorted(m.rpcs.items(), key=lambda item: (item[0][0], item[0][1].name)):
            calls.add_metric([*_split(path), code.name], n)
        yield calls
        latency = HistogramMetricFamily(
            "agenttasks_rpc_duration_seconds",
            "Time to answer a unary call, from the gate to the answer (streams are not timed).",
            labels=["service", "method"],
        )
        for path, histogram in sorted(m.rpc_seconds.items()):
            _histogram(latency, list(_split(path)), histogram)
        yield latency

    def _store(self) -> Iterator[Metric]:
        m = self._metrics
        for name, doc, histogram in (
            (
                "agenttasks_store_write_seconds",
                "Time from a write being queued to its commit (group commit included).",
                m.write_seconds,
            ),
            ("agenttasks_store_commit_seconds", "Time to run and commit one batch of writes.", m.batch_seconds),
            ("agenttasks_store_commit_writes", "Writes committed together in one batch (group commit).", m.batch_size),
        ):
            family = HistogramMetricFamily(name, doc)
            _histogram(family, [], histogram)
            yield family
        figures = self._figures
        if not figures.ok:
            return
        tasks = GaugeMetricFamily(
            "agenttasks_store_tasks",
            "Unfinished tasks in the store by agent and status (store-wide: the same on every replica).",
            labels=["tenant", "agent_id", "status"],
        )
        merged: Counter[tuple[str, str, str]] = Counter()
        keep = self._kept_agents()
        for (tenant, agent, status), n in figures.open_tasks.items():
            merged[(*_label(keep, (tenant, agent)), status)] += n
        for labels, n in sorted(merged.items()):
            tasks.add_metric(list(labels), n)
        yield tasks
        pending = GaugeMetricFamily(
            "agenttasks_store_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered nor given up (store-wide: the same on every replica).",
        )
        pending.add_metric([], figures.pending_deliveries)
        yield pending
        failing = GaugeMetricFamily(
            "agenttasks_store_webhook_deliveries_failing",
            "Pending webhook deliveries that failed at least once, by target host (the worst "
            f"{FAILING_HOST_SERIES}; the rest under _other; store-wide: the same on every replica).",
            labels=["host"],
        )
        for host, n in sorted(figures.failing_hosts.items()):
            failing.add_metric([host], n)
        yield failing

    def _webhooks(self) -> Iterator[Metric]:
        m = self._metrics
        attempts = CounterMetricFamily(
            "agenttasks_webhook_attempts",
            "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again later), "
            "dead (failed, no attempt left).",
            labels=["outcome"],
        )
        for outcome, n in sorted(m.webhook_attempts.items()):
            attempts.add_metric([outcome], n)
        yield attempts
        latency = HistogramMetricFamily(
            "agenttasks_webhook_attempt_seconds", "Time one delivery attempt took, failed ones included."
        )
        _histogram(latency, [], m.webhook_seconds)
        yield latency

    def _agents(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "agenttasks_workers_connected", "Worker streams connected to this server.", labels=["tenant", "agent_id"]
        )
        free = GaugeMetricFamily(
            "agenttasks_worker_free_slots",
            "Tasks this server's connected workers could take now (capacity not in use).",
            labels=["tenant", "agent_id"],
        )
        keep = self._kept_agents()
        workers: Counter[AgentKey] = Counter()
        slots: Counter[AgentKey] = Counter()
        for key in self._dispatcher.served():
            label = _label(keep, key)
            for session in self._dispatcher.workers(*key):
                workers[label] += 1
                slots[label] += session.free
        for label, n in sorted(workers.items()):
            connected.add_metric(list(label), n)
            free.add_metric(list(label), slots[label])
        yield connected
        yield free

    def _kept_agents(self) -> frozenset[AgentKey]:
        """The agents with series of their own: the busiest `agent_series` of them."""
        weight: Counter[AgentKey] = Counter()
        for (tenant, agent, _), n in self._figures.open_tasks.items():
            weight[(tenant, agent)] += n
        for key in self._dispatcher.served():
            weight[key] += len(self._dispatcher.workers(*key))
        if len(weight) <= self._agent_series:
            return frozenset(weight)
        # Ties broken by name, so the same agents keep their series from one scrape to the next.
        ranked = sorted(weight.items(), key=lambda item: (-item[1], item[0]))
        return frozenset(key for key, _ in ranked[: self._agent_series])


def _label(keep: frozenset[AgentKey], key: AgentKey) -> AgentKey:
    return key if key in keep else (OTHER, OTHER)


def _split(path: str) -> tuple[str, str]:
    """'/agenttasks.v1.TaskService/Submit' -> ('agenttasks.v1.TaskService', 'Submit')."""
    service, _, method = path.lstrip("/").partition("/")
    return service, method


def failing_hosts(urls: list[tuple[str, int]], keep: int) -> Counter[str]:
    """Failed pending deliveries per target host (host:port, never the path, query or user
    info, which may carry secrets): the `keep` hosts with most, the rest summed under _other."""
    hosts: Counter[str] = Counter()
    for url, n in urls:
        try:
            parts = urlsplit(url)
            host = parts.hostname or OTHER
            port = parts.port
        except ValueError:  # not a URL this server would have accepted; counted all the same
            host, port = OTHER, None
        if ":" in host:  # IPv6, bracketed as in a URL
            host = f"[{host}]"
        hosts[f"{host}:{port}" if port else host] += n
    ranked = sorted(hosts.items(), key=lambda item: (-item[1], item[0]))
    kept: Counter[str] = Counter(dict(ranked[:keep]))
    if rest := sum(n for _, n in ranked[keep:]):
        kept[OTHER] += rest
    return kept
