"""The delivery loop: takes due deliveries from the outbox and POSTs them, signed.

Durability: rows are written with the change they report (core.ports.save); this loop only
moves them along. Taking a delivery pushes its next_attempt_at past the attempt's timeout, so
no other round or replica sends it meanwhile, and if this process dies mid-attempt the row is
simply due again later: delivery is at-least-once, and the stable webhook-id lets receivers
drop duplicates.

Isolation: at most `per_tenant` attempts of one tenant run at once (and the store hands out at
most that many per tenant per round), so a slow or dead endpoint holds only its own tenant's
slots; attempts run as tasks beside the API, never in its way.

Retries: any non-2xx answer, timeout, connection error or refused target is a failure, retried
on `schedule` (seconds after each failed attempt, about three days in all by default) with
+-20% jitter; 429/503 with Retry-After wait what the receiver asked; 410 Gone stops at once.
When the schedule is spent the delivery is dead, kept with its log, and can be retried by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from ipaddress import IPv4Network, IPv6Network

import httpx
from google.protobuf import json_format

from agenttasks import settings
from agenttasks.api import convert
from agenttasks.core.codec import task_from_json
from agenttasks.core.errors import StoreUnreachable
from agenttasks.core.model import DeliveryState, Task, TaskEvent, WebhookDelivery, utcnow
from agenttasks.core.ports import WEBHOOK_EVENTS, Store, WriteTx
from agenttasks.observe import tracing
from agenttasks.webhooks import secrets, signing
from agenttasks.webhooks.sender import AttemptResult, deliver, make_client
from agenttasks.webhooks.ssrf import Resolver

log = logging.getLogger(__name__)

# Seconds to wait after failed attempt 1, 2, ...: exponential, then every 12 h, ~75 h in all.
DEFAULT_SCHEDULE: tuple[float, ...] = tuple(settings.DEFAULT_SCHEDULE)
MAX_RETRY_AFTER = 24 * 3600.0
CLAIM_MARGIN_SECONDS = 5.0
JITTER = 0.2


def render_body(delivery: WebhookDelivery) -> bytes:
    """`{type, timestamp, data}` with data the task as GetStatus showed it at the event."""
    task = task_from_json(delivery.snapshot)
    data = json_format.MessageToDict(
        convert.task(task), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    timestamp = delivery.event_time.isoformat().replace("+00:00", "Z")
    body = {"type": delivery.event_type, "timestamp": timestamp, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def next_attempt(attempts: int, result: AttemptResult, schedule: Sequence[float], rng: random.Random) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones, or None when to give up."""
    if result.status_code == 410:
        return None
    if attempts > len(schedule):
        return None
    if result.status_code in (429, 503) and result.retry_after is not None:
        return min(max(result.retry_after, 0.0), MAX_RETRY_AFTER)
    base = schedule[attempts - 1]
    return base * rng.uniform(1 - JITTER, 1 + JITTER)


def _attempt_attributes(delivery: WebhookDelivery) -> dict[str, str | int]:
    return {
        "agenttasks.task_id": delivery.task_id,
        "agenttasks.delivery_id": delivery.delivery_id,
        "agenttasks.webhook.event_type": delivery.event_type,
        "agenttasks.webhook.attempt": delivery.attempts + 1,
        "http.request.method": "POST",
    }


def _describe(result: AttemptResult) -> str:
    if result.status_code is None:
        return result.error
    if result.status_code == 410:
        return "the endpoint answered 410 Gone: no more attempts"
    if result.ok:
        return ""
    return f"HTTP {result.status_code}"


class Deliverer:
    def __init__(
        self,
        store: Store,
        *,
        allow: Sequence[IPv4Network | IPv6Network] = (),
        timeout: float = 15.0,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        concurrency: int = 32,
        per_tenant: int = 4,
        poll_seconds: float = 0.5,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._store = store
        self._allow = list(allow)
        self._timeout = timeout
        self._schedule = list(schedule)
        self._concurrency = concurrency
        self._per_tenant = per_tenant
        self._poll = poll_seconds
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._resolver = resolver
        self._wake = asyncio.Event()
        self._busy: Counter[str] = Counter()
        self._attempts: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def on_change(self, task: Task, events: list[TaskEvent]) -> None:
        """Hub listener: a committed change of a webhook task may have added outbox rows."""
        if task.webhook_url and any(e.status in WEBHOOK_EVENTS for e in events):
            self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """The supervisor loop: rounds until `stopping`, then in-flight attempts are cancelled
        (their rows are due again after the claim lapses, so nothing is lost)."""
        self._client = make_client()
        try:
            while not stopping.is_set():
                with contextlib.suppress(StoreUnreachable):  # the store logged it; the next poll tries again
                    await self._round()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())]
                    try:
                        await asyncio.wait(waiters, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
        finally:
            for attempt in list(self._attempts):
                attempt.cancel()
            await asyncio.gather(*self._attempts, return_exceptions=True)
            await self._client.aclose()

    async def _round(self) -> None:
        free = self._concurrency - len(self._attempts)
        if free <= 0:
            return
        now = self._clock()
        # Most rounds find nothing due: a read says so without a write transaction (and its
        # fsync) every poll interval of an idle server.
        if not await self._store.read(lambda tx: tx.due_deliveries(now, 1, self._per_tenant)):
            return
        # Long enough for the attempt (and its bookkeeping) to finish before anyone else may
        # retry it; after a crash, what was in flight is due again this soon.
        claim_until = now + timedelta(seconds=self._timeout + CLAIM_MARGIN_SECONDS)
        busy = Counter(self._busy)
        # Tenants at their cap get nothing this round, but the store does not know that: fetch
        # past their rows, or their backlog would fill the batch and leave free slots idle.
        full = sum(1 for n in busy.values() if n >= self._per_tenant)
        fetch = free + full * self._per_tenant

        def claim(tx: WriteTx) -> list[WebhookDelivery]:
            claimed: list[WebhookDelivery] = []
            for delivery in tx.due_deliveries(now, fetch, self._per_tenant):
                if len(claimed) >= free:
                    break
                if busy[delivery.tenant] >= self._per_tenant:
                    continue
                busy[delivery.tenant] += 1
                tx.update_delivery(replace(delivery, next_attempt_at=claim_until, updated_at=now))
                claimed.append(delivery)
            return claimed

        for delivery in await self._store.write(claim):
            self._busy[delivery.tenant] += 1
            attempt = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery.delivery_id}")
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempts.discard)

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        try:
            assert self._client is not None  # noqa: S101 - set by run() before any round
            secret = await secrets.signing_secret(self._store, delivery.tenant)
            body = render_body(delivery)
            started = self._clock()
            headers = signing.headers(delivery.delivery_id, int(started.timestamp()), body, secret.active(started))
            # A span per attempt in the task's trace; the receiver gets its context as `traceparent`.
            trace = (delivery.snapshot.get("traceparent") or "", delivery.snapshot.get("tracestate") or "")
            attributes = _attempt_attributes(delivery) if tracing.enabled() else None
            with tracing.child_of(trace, "agenttasks.webhook.deliver", "client", attributes) as span:
                headers.update(tracing.headers())
                result = await deliver(
                    self._client,
                    delivery.url,
                    headers,
                    body,
                    allow=self._allow,
                    timeout=self._timeout,
                    resolver=self._resolver,
                )
                if result.status_code is not None:
                    span.set("http.response.status_code", result.status_code)
                if not result.ok:
                    span.fail(_describe(result) or "not delivered")
            await self._record(delivery.tenant, delivery.delivery_id, result, started)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not kill the loop; the claim lapses and it is retried
            log.exception("webhook delivery %s failed unexpectedly", delivery.delivery_id)
        finally:
            self._busy[delivery.tenant] -= 1
            self._wake.set()

    async def _record(self, tenant: str, delivery_id: str, result: AttemptResult, started: datetime) -> None:
        now = self._clock()

        def op(tx: WriteTx) -> WebhookDelivery | None:
            current = tx.get_delivery(tenant, delivery_id)
            if current is None or current.state is not DeliveryState.PENDING:
                return None
            attempts = current.attempts + 1
            changed = replace(
                current,
                attempts=attempts,
                last_status_code=result.status_code or 0,
                last_error=_describe(result),
                last_attempt_at=started,
                updated_at=now,
            )
            if result.ok:
                changed = replace(changed, state=DeliveryState.DELIVERED, delivered_at=now, next_attempt_at=None)
            elif (delay := next_attempt(attempts, result, self._schedule, self._rng)) is None:
                changed = replace(changed, state=DeliveryState.DEAD, next_attempt_at=None)
            else:
                changed = replace(changed, next_attempt_at=now + timedelta(seconds=delay))
            tx.update_delivery(changed)
            return changed

        changed = await self._store.write(op)
        if changed is not None and changed.state is not DeliveryState.PENDING:
            log.info(
                "webhook %s %s %s after %d attempts (%s)",
                changed.delivery_id,
                changed.event_type,
                changed.state.value,
                changed.attempts,
                changed.last_error or changed.last_status_code,
            )
