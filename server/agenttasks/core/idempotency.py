"""Client idempotency keys (AIP-155): a retry with the same key gets the original answer.

The key is looked up and the answer stored inside the same write transaction as the change,
so a retry racing the original (or arriving after a crash) can never create a second task.
The same key with a different request is refused: it is almost always a client bug.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from agenttasks.core.errors import IdempotencyKeyReused
from agenttasks.core.model import IdempotencyRecord, JsonObject
from agenttasks.core.ports import WriteTx


def request_hash(fields: dict[str, Any]) -> str:
    """A stable digest of the request fields that define 'the same request'."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(tx: WriteTx, tenant: str, scope: str, key: str, digest: str) -> JsonObject | None:
    """The stored answer for this key, None for a new key; raises if the key was used differently."""
    if not key:
        return None
    record = tx.get_idempotency(tenant, scope, key)
    if record is None:
        return None
    if record.request_hash != digest:
        raise IdempotencyKeyReused(key)
    return record.response


def remember(
    tx: WriteTx, tenant: str, scope: str, key: str, digest: str, response: JsonObject, now: datetime, ttl: timedelta
) -> None:
    if key:
        tx.put_idempotency(
            IdempotencyRecord(
                tenant=tenant,
                scope=scope,
                key=key,
                request_hash=digest,
                response=response,
                created_at=now,
                expires_at=now + ttl,
            )
        )
