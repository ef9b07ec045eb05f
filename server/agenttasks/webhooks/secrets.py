"""Each tenant's webhook signing secret: made on first use, rotated with an overlap.

During the overlap every delivery carries two signatures (new and previous secret), so a
receiver can switch to the new secret whenever it likes within the window and lose nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agenttasks.core.model import SigningSecret, utcnow
from agenttasks.core.ports import Store, WriteTx
from agenttasks.webhooks.signing import new_secret

DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)


def _get_or_make(tx: WriteTx, tenant: str, now: datetime) -> SigningSecret:
    secret = tx.get_signing_secret(tenant)
    if secret is None:
        secret = SigningSecret(tenant=tenant, secret=new_secret(), created_at=now)
        tx.put_signing_secret(secret)
    return secret


async def signing_secret(store: Store, tenant: str) -> SigningSecret:
    """The tenant's secret, made (once, even under concurrent first calls) if it has none."""
    existing = await store.read(lambda tx: tx.get_signing_secret(tenant))
    if existing is not None:
        return existing
    now = utcnow()
    return await store.write(lambda tx: _get_or_make(tx, tenant, now))


async def rotate(store: Store, tenant: str, overlap: timedelta = DEFAULT_OVERLAP) -> SigningSecret:
    """A new secret; the current one keeps signing too until `overlap` has passed."""
    now = utcnow()

    def op(tx: WriteTx) -> SigningSecret:
        current = _get_or_make(tx, tenant, now)
        rotated = SigningSecret(
            tenant=tenant,
            secret=new_secret(),
            created_at=now,
            previous_secret=current.secret,
            previous_until=now + overlap,
        )
        tx.put_signing_secret(rotated)
        return rotated

    return await store.write(op)
