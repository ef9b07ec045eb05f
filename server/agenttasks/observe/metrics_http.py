"""The /metrics endpoint: a small HTTP/1.1 responder on the event loop, and its wiring.

On the loop rather than prometheus_client's threaded server because the numbers are plain
values only the loop thread changes (`metrics.py`): reading them there needs no lock, and the
store-wide figures are read with the store's own async API before the page is rendered. It
answers GET (or HEAD) /metrics and nothing else, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from agenttasks.api.gate import Gate
from agenttasks.core.dispatch import Dispatcher
from agenttasks.core.ports import ObservableWrites, Store
from agenttasks.core.watch import EventHub
from agenttasks.observe.metric_families import ServiceCollector, StoreFigures
from agenttasks.observe.metrics import Metrics
from agenttasks.webhooks.deliverer import Deliverer

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 16 * 1024
PATH = "/metrics"


class MetricsEndpoint:
    """Serves one server's metrics on host:port (port 0 picks one; `port` holds it once started).
    An async context manager; `stop` is safe to call twice."""

    def __init__(self, metrics: Metrics, collector: ServiceCollector, figures: StoreFigures, host: str, port: int):
        self.metrics = metrics
        self.host = host
        self.port = port
        self.figures = figures
        # A registry of its own: several servers in one process (tests) must not share series.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def render(self) -> bytes:
        """The page a scrape gets (the store-wide figures refreshed if they are old)."""
        await self.figures.refresh()
        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"only GET and HEAD\n", "text/plain"
            elif path != PATH:
                status, body, kind = "404 Not Found", b"metrics are at /metrics\n", "text/plain"
            else:
                status, body, kind = "200 OK", await self.render(), CONTENT_TYPE_LATEST
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that sent no complete request, or left: nothing to answer
        except Exception:  # never let one scrape's failure pass unseen, nor take the server down
            log.exception("metrics: a scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> MetricsEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def metrics_endpoint(
    store: Store,
    hub: EventHub,
    dispatcher: Dispatcher,
    gate: Gate,
    deliverer: Deliverer,
    *,
    host: str,
    port: int,
    agent_series: int,
) -> MetricsEndpoint:
    """A recorder told of what the parts of one server do (hub, gate, store writer, webhook
    deliverer), and an endpoint, not yet started, that serves it."""
    metrics = Metrics(hub)
    gate.observe = metrics.rpc
    deliverer.observe = metrics.webhook_attempt
    if isinstance(store, ObservableWrites):
        store.observe_writes(metrics.store_batch)
    figures = StoreFigures(store)
    collector = ServiceCollector(metrics, dispatcher, hub, figures, agent_series, gate.slots)
    return MetricsEndpoint(metrics, collector, figures, host, port)
