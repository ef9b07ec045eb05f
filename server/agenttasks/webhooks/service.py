"""Webhook operations for authenticated principals: the delivery log, manual retry, secrets.

Transport-neutral like the core: the gRPC servicer and the CLI call in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from agenttasks.core.errors import DeliveryNotFound, InvalidArgument
from agenttasks.core.ids import check_id
from agenttasks.core.model import DeliveryState, Principal, SigningSecret, WebhookDelivery, utcnow
from agenttasks.core.ports import ReadTx, Store, WriteTx
from agenttasks.core.tasks import check_parent, find_task
from agenttasks.webhooks import secrets


class WebhookCore:
    def __init__(self, store: Store, wake: Callable[[], None] = lambda: None) -> None:
        self._store = store
        # Called when a delivery became due, so the deliverer need not wait for its next poll.
        self._wake = wake

    async def deliveries(self, principal: Principal, agent_id: str, task_id: str) -> list[WebhookDelivery]:
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        tenant = principal.tenant

        def op(tx: ReadTx) -> list[WebhookDelivery]:
            find_task(tx, tenant, agent_id, task_id)
            return tx.task_deliveries(tenant, task_id)

        return await self._store.read(op)

    async def retry(self, principal: Principal, delivery_id: str) -> WebhookDelivery:
        """Due again now, with a fresh retry schedule (attempts start over)."""
        delivery_id = check_id(delivery_id, "delivery_id")
        now = utcnow()

        def op(tx: WriteTx) -> WebhookDelivery:
            found = tx.get_delivery(principal.tenant, delivery_id)
            if found is None:
                raise DeliveryNotFound(delivery_id)
            if found.state is not DeliveryState.DEAD:
                # A pending delivery may be in flight right now: sending it again would send
                # it twice at once. It is retried on its own schedule anyway.
                why = "already succeeded" if found.state is DeliveryState.DELIVERED else "is still being retried"
                raise InvalidArgument.field("delivery_id", f"only a dead delivery can be retried; this one {why}")
            again = replace(found, state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
            tx.update_delivery(again)
            return again

        delivery = await self._store.write(op)
        self._wake()
        return delivery

    async def secret(self, principal: Principal) -> SigningSecret:
        return await secrets.signing_secret(self._store, principal.tenant)

    async def rotate(self, principal: Principal, overlap_seconds: int | None = None) -> SigningSecret:
        overlap = secrets.DEFAULT_OVERLAP if overlap_seconds is None else timedelta(seconds=overlap_seconds)
        if not timedelta(0) <= overlap <= secrets.MAX_OVERLAP:
            raise InvalidArgument.field(
                "overlap_seconds", f"must be between 0 and {int(secrets.MAX_OVERLAP.total_seconds())}"
            )
        return await secrets.rotate(self._store, principal.tenant, overlap)
