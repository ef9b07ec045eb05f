"""API keys: the `atk_<key_id>_<secret>` format, how the secret is stored, and how it is checked.

A key is shown to its owner once, when it is created. The store keeps the key id in clear (it
is the lookup key, and the id that audit logs and revocation name) and only a hash of the
secret, so a leaked database does not leak usable credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import string
from collections.abc import Callable

from agenttasks.core.ids import agent_scope
from agenttasks.core.model import ApiKeyRecord, Role, utcnow
from agenttasks.core.ports import Store, WriteTx

log = logging.getLogger(__name__)

PREFIX = "atk"
"""First part of every key, so keys are recognisable (secret scanners, the bearer header)."""

KEY_ID_HEX_CHARS = 16
"""64 random bits: enough never to collide within a deployment, short enough to quote in logs."""

SECRET_BYTES = 32
"""256 random bits; `secrets.token_urlsafe(32)` renders them as 43 URL-safe characters."""

_HEX = frozenset(string.hexdigits.lower())
_URLSAFE = frozenset(string.ascii_letters + string.digits + "-_")
# Bounds on the secret part: generous around the 43 characters we issue, but an upper bound keeps
# a multi-kilobyte header from being hashed and a lower one rejects obvious truncation early.
_MIN_SECRET_CHARS = 20
_MAX_SECRET_CHARS = 256


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex.

    A fast unsalted hash is right here, unlike for passwords: the secret is 256 bits from
    `secrets`, so there is no dictionary to try and brute force is out of reach however fast the
    hash is. A slow KDF (bcrypt, argon2) would only add milliseconds to every authenticated call.
    Salt is unneeded for the same reason: no two secrets are alike, so precomputed tables are useless.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key(tenant: str, role: Role | str, description: str = "", agent_id: str = "") -> tuple[str, ApiKeyRecord]:
    """Mints a key: returns the full key text (show it once, never store it) and the record to store.
    With `agent_id`, a worker key serves that agent only.

    Raises ValueError for an empty tenant, a role that is not one of `Role`, or an agent scope
    on a key that is not a worker's.
    """
    if not tenant:
        raise ValueError("tenant must not be empty")
    role = Role(role)
    if agent_id and role is not Role.WORKER:
        raise ValueError("only a worker key can be scoped to an agent")
    agent_id = agent_scope(agent_id)
    key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        role=role,
        secret_hash=hash_secret(secret),
        created_at=utcnow(),
        description=description,
        agent_id=agent_id,
    )
    return f"{PREFIX}_{key_id}_{secret}", record


def parse_api_key(text: str) -> tuple[str, str] | None:
    """Splits `atk_<key_id>_<secret>` into (key_id, secret), or None if the text is not one.

    Only the first two underscores separate parts: the secret is URL-safe base64 and may itself
    contain `_` and `-`. Anything malformed answers None (never raises), so callers can use this
    to tell an API key from a JWT and reject garbage without a store lookup.
    """
    parts = text.split("_", 2)
    if len(parts) != 3:
        return None
    prefix, key_id, secret = parts
    if prefix != PREFIX:
        return None
    if len(key_id) != KEY_ID_HEX_CHARS or not _HEX.issuperset(key_id):
        return None
    if not _MIN_SECRET_CHARS <= len(secret) <= _MAX_SECRET_CHARS or not _URLSAFE.issuperset(secret):
        return None
    return key_id, secret


def verify_secret(record: ApiKeyRecord, secret: str) -> bool:
    """Whether `secret` is the one `record` was minted with. Revocation is not checked here.

    `hmac.compare_digest` keeps the comparison time independent of where the hashes differ.
    """
    return hmac.compare_digest(hash_secret(secret), record.secret_hash)


async def create_api_key(store: Store, tenant: str, role: Role | str, description: str = "", agent_id: str = "") -> str:
    """Mints a key, stores its record, and returns the full key text (the only time it is seen)."""
    key, record = new_api_key(tenant, role, description, agent_id)

    def put(tx: WriteTx) -> None:
        tx.put_api_key(record)

    await store.write(put)
    return key


# The meta row a revocation moves, in the revocation's own write: servers that cache verified
# keys (`Authenticator`) look at it every REVOCATION_POLL_SECONDS and drop their cache when it
# moved, so a key revoked from another process (`agenttasks keys revoke`) stops working at once.
REVOCATIONS_META = "api_key_revocations"
REVOCATION_POLL_SECONDS = 0.2


async def revoke_api_key(store: Store, key_id: str) -> bool:
    """Marks the key revoked now; False when there is no such key. Running servers notice
    within REVOCATION_POLL_SECONDS (at once on PostgreSQL, where the revocation is announced)."""
    at = utcnow()

    def revoke(tx: WriteTx) -> bool:
        if not tx.revoke_api_key(key_id, at):
            return False
        tx.set_meta(REVOCATIONS_META, f"{at.isoformat()} {key_id}")
        return True

    return await store.write(revoke)


async def notice_revocations(store: Store, forget: Callable[[list[str] | None], None], stopping: asyncio.Event) -> None:
    """Until `stopping`: drop cached keys whenever a revocation was stored (by anyone)."""
    seen = await store.read(lambda tx: tx.get_meta(REVOCATIONS_META))
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=REVOCATION_POLL_SECONDS)
        try:
            now = await store.read(lambda tx: tx.get_meta(REVOCATIONS_META))
        except Exception:  # the store says why; keys stay cached no longer than their TTL
            log.debug("could not look for revocations", exc_info=True)
            continue
        if now != seen:
            seen = now
            forget(None)
