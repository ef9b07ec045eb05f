"""The running service: store, cores, gRPC server with health and reflection, background loops.

`Service` is an async context manager; `stop` follows the drain order of STYLE: refuse new calls
and report NOT_SERVING, end watch streams with a resumable final message, let in-flight calls
finish within the grace period, stop the loops, close the store. It is safe to call twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agenttasks.api.agent_servicer import AgentServicer
from agenttasks.api.decoding import register
from agenttasks.api.gate import Gate
from agenttasks.api.task_servicer import TaskServicer
from agenttasks.api.webhook_servicer import WebhookServicer
from agenttasks.api.worker_servicer import WorkerServicer
from agenttasks.auth import Authenticator, create_api_key, server_jwt_secret
from agenttasks.auth.api_keys import notice_revocations
from agenttasks.background import Loop, Supervisor, every
from agenttasks.core.agents import AgentCore
from agenttasks.core.call_slots import CallSlots
from agenttasks.core.dispatch import Dispatcher
from agenttasks.core.model import Role, utcnow
from agenttasks.core.paging import PageTokens
from agenttasks.core.ports import SharedStore, Store, WriteTx, in_bounded_writes
from agenttasks.core.rate_limit import TokenBuckets
from agenttasks.core.replicas import Replicas
from agenttasks.core.tasks import TaskCore
from agenttasks.core.validation import Limits
from agenttasks.core.watch import EventHub
from agenttasks.observe.metrics_http import MetricsEndpoint, metrics_endpoint
from agenttasks.settings import Settings
from agenttasks.store import StoreUnavailable, open_store
from agenttasks.store.sqlite_store import SqliteStore
from agenttasks.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from agenttasks.webhooks import ssrf
from agenttasks.webhooks.deliverer import Deliverer
from agenttasks.webhooks.service import WebhookCore

log = logging.getLogger(__name__)

# The asyncio flavour of the health servicer (grpc-stubs does not know `health.aio`).
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


class CheckedHealth(HealthServicer):  # type: ignore[misc]
    """The health service, noting when it was last asked: a draining server behind a load
    balancer that health-checks it keeps refusing calls until the balancer has been told
    NOT_SERVING, not merely until a moment without calls (which comes sooner under light load,
    and then the balancer's next call finds the server gone: CANCELLED, which nobody retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_check = 0.0  # time.monotonic() of the last Check; 0: never asked

    async def Check(self, request: Any, context: Any) -> Any:
        self.last_check = time.monotonic()
        return await super().Check(request, context)


BOOTSTRAP_TENANT = "default"
_BOOTSTRAP_MARK = "bootstrap_admin_key_issued"
PURGE_INTERVAL_SECONDS = 3600.0
# A draining server stops listening once no call came for this long (or its notice is over).
DRAIN_QUIET_SECONDS = 0.05
# How often health checks look at whether the store is reachable.
HEALTH_SECONDS = 0.2
# Expired idempotency keys deleted per write: a day of keyed Submits can expire at once.
PURGE_BATCH = 5_000

GRPC_OPTIONS = [
    # Two servers on one port would silently share traffic; a clash must fail loudly instead.
    ("grpc.so_reuseport", 0),
    # Thousands of watchers connecting at once are otherwise CANCELLED by the gRPC core.
    ("grpc.server.max_pending_requests", 20000),
    ("grpc.server.max_pending_requests_hard_limit", 40000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Above gRPC's 4 MiB default, so a worker's oversized report is refused with an ack
    # (INVALID_ARGUMENT) instead of ending its whole stream and requeueing all its tasks.
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.http2.min_ping_interval_without_data_ms", 10000),
]


class StartupError(Exception):
    """The service cannot start (e.g. its port is taken); the message is one clear line."""


async def ensure_secret(store: Store, name: str) -> str:
    """A random secret kept in the store's meta table, made on first use."""

    def op(tx: WriteTx) -> str:
        value = tx.get_meta(name)
        if value is None:
            value = secrets.token_urlsafe(32)
            tx.set_meta(name, value)
        return value

    return await store.write(op)


async def bootstrap_admin_key(store: Store) -> str | None:
    """On the very first start, an admin key for the default tenant (shown once); else None."""
    if await store.read(lambda tx: tx.get_meta(_BOOTSTRAP_MARK)) is not None:
        return None
    key = await create_api_key(store, BOOTSTRAP_TENANT, Role.ADMIN, description="bootstrap admin key")
    await store.write(lambda tx: tx.set_meta(_BOOTSTRAP_MARK, utcnow().isoformat()))
    return key


class Service:
    """agenttasks' gRPC service over one store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap_key: str | None = None
        self.port = 0
        self.hub = EventHub()
        self._store: Store | None = None
        self._server: grpc.aio.Server | None = None
        self._health: CheckedHealth | None = None
        self._gate: Gate | None = None
        self._supervisor: Supervisor | None = None
        self._dispatcher_started = False
        self._stopped = False
        self.metrics: MetricsEndpoint | None = None

    @property
    def gate(self) -> Gate:
        """The wrapper every call goes through (its limits); set once the service has started."""
        if self._gate is None:
            raise RuntimeError("the service has not started")
        return self._gate

    @property
    def store(self) -> Store:
        assert self._store is not None, "service not started"  # noqa: S101
        return self._store

    @property
    def supervisor(self) -> Supervisor:
        assert self._supervisor is not None, "service not started"  # noqa: S101
        return self._supervisor

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.port}"

    async def start(self) -> None:
        s = self.settings
        try:
            self._store = store = await open_store(s.db)
        except StoreUnavailable as error:  # no driver, no server, no schema: said in one line
            raise StartupError(str(error)) from None
        if isinstance(store, SqliteStore):
            try:
                store.serve_alone()
            except StoreUnavailable as error:  # another server has the file
                await store.close()
                self._store = None
                raise StartupError(str(error)) from None
        try:
            await self._start(store)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, store: Store) -> None:
        s = self.settings
        jwt_secret = await server_jwt_secret(store, s)
        tokens = PageTokens(await ensure_secret(store, "page_token_secret"))
        limits = Limits(
            max_message_bytes=s.max_message_bytes,
            max_metadata_bytes=s.max_metadata_bytes,
            max_metadata_depth=s.max_metadata_depth,
            max_timeout_seconds=s.max_timeout_seconds,
            max_watches_per_credential=s.max_watches_per_credential,
            max_queued_per_tenant=s.max_queued_per_tenant,
        )
        allow = ssrf.parse_allow(s.webhook_allow)
        self.tasks = TaskCore(
            store,
            self.hub,
            limits=limits,
            base_url=s.base_url,
            page_tokens=tokens,
            idempotency_ttl=timedelta(seconds=s.idempotency_ttl_seconds),
            check_webhook_url=lambda url: ssrf.check_url_literal(url, allow),
        )
        self.deliverer = Deliverer(
            store,
            allow=allow,
            timeout=s.webhook_timeout_seconds,
            schedule=s.webhook_retry_schedule,
            concurrency=s.webhook_concurrency,
            per_tenant=s.webhook_per_tenant,
            poll_seconds=s.sweep_seconds,
        )
        self.hub.listen(self.deliverer.on_change)
        self.webhooks = WebhookCore(store, wake=self.deliverer.wake)
        self.agents = AgentCore(store, self.hub, limits=limits, page_tokens=tokens)
        self.dispatcher = Dispatcher(store, self.hub, lease_seconds=s.lease_seconds)
        self.agents.on_status_change = self.dispatcher.poke
        self.tasks.dispatcher = self.dispatcher
        self._dispatcher_started = True
        self._authenticator = authenticator = Authenticator(
            store, s, jwt_secret, api_key_cache_ttl=s.api_key_cache_seconds
        )
        rate_limit = TokenBuckets(s.rate_limit_per_second, s.rate_limit_burst) if s.rate_limit_per_second else None
        slots = (
            CallSlots(s.max_running_calls_per_tenant, s.max_waiting_calls_per_tenant, s.max_time_share_per_tenant)
            if s.max_running_calls_per_tenant
            else None
        )
        self._gate = gate = Gate(authenticator, rate_limit, s.call_deadline_seconds or None, slots)
        # Several servers on one PostgreSQL database: hear what the others commit.
        self.replicas = (
            Replicas(store, self.hub, self.dispatcher, authenticator.forget) if isinstance(store, SharedStore) else None
        )
        if self.replicas is None:  # the only server of its SQLite file (`serve_alone`)
            self.hub.keep_latest()

        self._server = server = grpc.aio.server(options=GRPC_OPTIONS)
        # Through `decoding.register`: a request grpcio cannot decode is INVALID_ARGUMENT.
        register(task_service_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer(self.tasks, gate), server)
        register(agent_service_pb2_grpc.add_AgentServiceServicer_to_server, AgentServicer(self.agents, gate), server)
        register(
            worker_service_pb2_grpc.add_WorkerServiceServicer_to_server, WorkerServicer(self.dispatcher, gate), server
        )
        register(
            webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server, WebhookServicer(self.webhooks, gate), server
        )
        self._health = CheckedHealth()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = [
            task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
            agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
            worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
        ]
        reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        try:
            self.port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartupError(f"cannot listen on {s.grpc_host}:{s.grpc_port} for gRPC: address in use or unavailable")
        if s.metrics_port:
            self.metrics = metrics_endpoint(
                store, self.hub, self.dispatcher, gate, self.deliverer,
                host=s.metrics_host, port=s.metrics_port, agent_series=s.metrics_agent_series,
            )  # fmt: skip
            try:
                await self.metrics.start()
            except OSError as error:
                raise StartupError(f"cannot listen on {s.metrics_host}:{s.metrics_port} for metrics: {error}") from None
        # Only once the port is ours: a start that fails must not use up the key it never showed.
        self.bootstrap_key = await bootstrap_admin_key(store)
        await server.start()
        for name in ["", *services]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

        self._supervisor = sup = Supervisor()
        sup.start("purge-idempotency-keys", self._purge_loop)
        sup.start("expire-leases", self._sweep_loop(self.dispatcher.expire_leases))
        sup.start("enforce-deadlines", self._sweep_loop(self.dispatcher.enforce_deadlines))
        sup.start("deliver-webhooks", self.deliverer.run)
        sup.start("notice-key-revocations", functools.partial(notice_revocations, store, self._authenticator.forget))
        if self.replicas is not None and isinstance(store, SharedStore):
            sup.start("hear-other-servers", functools.partial(store.follow_others, self.replicas))
            sup.start("show-store-health", functools.partial(self._health_loop, store, services))

    async def _health_loop(self, store: SharedStore, services: list[str], stopping: asyncio.Event) -> None:
        """NOT_SERVING while the database is out of reach, so a load balancer (the gateway)
        sends calls to replicas that can answer them; SERVING again once it answers."""
        shown = True

        async def show() -> None:
            nonlocal shown
            if store.available != shown and self._health is not None and not self._stopped:
                shown = store.available
                status = health_pb2.HealthCheckResponse.SERVING if shown else health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ["", *services]:
                    await self._health.set(name, status)

        await every(HEALTH_SECONDS, stopping, show)

    async def _purge_loop(self, stopping: asyncio.Event) -> None:
        store = self.store

        async def purge() -> None:
            removed = await in_bounded_writes(
                lambda: store.write(lambda tx: tx.purge_idempotency(utcnow(), PURGE_BATCH)), PURGE_BATCH
            )
            if removed:
                log.info("purged %d expired idempotency keys", removed)

        await every(PURGE_INTERVAL_SECONDS, stopping, purge)

    def _sweep_loop(self, sweep: Callable[[], Awaitable[int]]) -> Loop:
        async def loop(stopping: asyncio.Event) -> None:
            await every(self.settings.sweep_seconds, stopping, sweep)

        return loop

    async def stop(self, grace: float | None = None) -> None:
        """Drain and close. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._gate is not None:
            self._gate.draining = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        self.hub.close()
        if self._dispatcher_started:
            await self.dispatcher.close()
        if self._gate is not None:
            await self._drain_notice(self._gate)
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self._store is not None:
            await self._store.close()

    async def _drain_notice(self, gate: Gate) -> None:
        """Refuse new calls with SHUTTING_DOWN (UNAVAILABLE: clients and the gateway retry
        elsewhere) for a while before the server stops listening. Stopping at once cut off the
        calls that had reached gRPC but not yet the service: their clients got CANCELLED, which
        no client retries, and could not tell whether the call had been done."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.drain_notice_seconds
        began = time.monotonic()
        # Behind its own Envoy (serve without --no-gateway) the health checker is that Envoy,
        # which has nowhere else to send calls and stops after this server: nothing to wait for.
        health = None if self.settings.gateway else self._health

        def balancer_not_told() -> bool:  # something health-checks us, and has not since we began to drain
            return health is not None and 0 < health.last_check < began

        while loop.time() < until and (  # noqa: ASYNC110 - polls clocks
            time.monotonic() - gate.last_call < DRAIN_QUIET_SECONDS or balancer_not_told()
        ):
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
