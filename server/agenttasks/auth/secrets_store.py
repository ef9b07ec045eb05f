"""The server's HS256 secret: configured, or generated once and kept in the store.

Keeping a generated secret in the database is what lets `agenttasks serve` and
`agenttasks token` agree on a key with zero configuration: both open the same database.
Anyone who can read the database can mint tokens, which is no more than they could do already
(they can read every task). Set `jwt_secret` or `jwt_public_key` to keep signing keys elsewhere.
"""

from __future__ import annotations

import secrets

from agenttasks.core.ports import ReadTx, Store, WriteTx
from agenttasks.settings import Settings

META_NAME = "jwt_hs256_secret"
"""Name of the generated secret in the store's meta table."""

GENERATED_SECRET_BYTES = 32
"""256 bits, the HS256 minimum of RFC 7518 section 3.2 (43 characters once URL-safe encoded)."""


async def server_jwt_secret(store: Store, settings: Settings) -> str:
    """`settings.jwt_secret` if set, else the secret kept in the store, generated on first use.

    Safe when several processes start at once on one database: the secret is generated and
    saved inside a single write that first checks again whether one already exists, so every
    caller ends up with the one that was committed first.
    """
    if settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
        return settings.jwt_secret.get_secret_value()

    def read(tx: ReadTx) -> str | None:
        return tx.get_meta(META_NAME)

    existing = await store.read(read)
    if existing:
        return existing

    candidate = secrets.token_urlsafe(GENERATED_SECRET_BYTES)

    def get_or_set(tx: WriteTx) -> str:
        current = tx.get_meta(META_NAME)
        if current:
            return current
        tx.set_meta(META_NAME, candidate)
        return candidate

    return await store.write(get_or_set)
