"""Turning a call's credentials into a `Principal`, independent of the transport.

The gRPC layer hands over the call metadata as a mapping with lower-case keys. Two headers are
understood: `authorization: Bearer <token>` (a JWT or an API key) and `x-api-key: <key>`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agenttasks.auth.api_keys import PREFIX, parse_api_key, verify_secret
from agenttasks.auth.jwt_tokens import JwtVerifier
from agenttasks.core.errors import Unauthenticated
from agenttasks.core.model import ApiKeyRecord, Principal
from agenttasks.core.ports import ReadTx, Store
from agenttasks.settings import Settings

MISSING_CREDENTIALS = "missing credentials: send 'authorization: Bearer <token>' or 'x-api-key: <key>'"
# One answer for unknown, revoked and wrong-secret keys, so probing reveals nothing.
INVALID_API_KEY = "invalid API key"
MALFORMED_API_KEY = f"malformed API key: expected {PREFIX}_<key_id>_<secret>"


@dataclass(frozen=True, slots=True)
class _CachedKey:
    record: ApiKeyRecord
    expires_at: float


class Authenticator:
    """Authenticates calls by JWT or API key.

    Verified API keys are remembered for `api_key_cache_ttl` seconds (at most `api_key_cache_size`
    of them, least recently used dropped first) to spare a store read on every call. The cache
    holds the stored record, not the answer, so the secret is still checked on every call. A
    revocation must not wait for the TTL: the service calls `forget` when one is stored (it
    looks every 0.2 s, `api_keys.notice_revocations`; on PostgreSQL each revocation is also
    announced to every server), and `agenttasks keys revoke` returns only after that.
    Only successes are cached: a key that fails is looked up again next time. A TTL of 0
    disables the cache.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        jwt_secret: str | None,
        *,
        api_key_cache_ttl: float = 5.0,
        api_key_cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if api_key_cache_ttl < 0 or api_key_cache_size < 0:
            raise ValueError("api_key_cache_ttl and api_key_cache_size must not be negative")
        self._store = store
        self._jwt = JwtVerifier(settings, jwt_secret)
        self._ttl = api_key_cache_ttl
        self._size = api_key_cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _CachedKey] = OrderedDict()
        # Moves on every `forget`: a lookup that began before must not cache what it read.
        self._generation = 0

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal:
        """The caller's principal, or Unauthenticated saying what is missing or wrong.

        `authorization` wins when both headers are sent. A bearer token in API key form
        (`atk_...`) is checked as an API key, anything else as a JWT.
        """
        authorization = metadata.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            # Never echo the header: with the scheme left out, its first word is the secret.
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
            if token.startswith(f"{PREFIX}_"):
                return await self._api_key(token)
            return self._jwt.verify(token)

        api_key = metadata.get("x-api-key")
        if api_key is not None:
            api_key = api_key.strip()
            if not api_key.startswith(f"{PREFIX}_") and api_key.count(".") == 2:
                raise Unauthenticated("x-api-key carries API keys only; send a JWT as 'authorization: Bearer <token>'")
            return await self._api_key(api_key)

        raise Unauthenticated(MISSING_CREDENTIALS)

    async def _api_key(self, text: str) -> Principal:
        parsed = parse_api_key(text)
        if parsed is None:
            raise Unauthenticated(MALFORMED_API_KEY)
        key_id, secret = parsed

        record = self._cached(key_id)
        if record is None:
            generation = self._generation

            def lookup(tx: ReadTx) -> ApiKeyRecord | None:
                return tx.get_api_key(key_id)

            record = await self._store.read(lookup)
            if record is None or record.revoked_at is not None:
                raise Unauthenticated(INVALID_API_KEY)
            if not verify_secret(record, secret):
                raise Unauthenticated(INVALID_API_KEY)
            if generation == self._generation:
                self._remember(record)
        elif not verify_secret(record, secret):
            raise Unauthenticated(INVALID_API_KEY)

        return Principal(tenant=record.tenant, role=record.role, subject=record.key_id, agent_id=record.agent_id)

    def forget(self, key_ids: list[str] | None) -> None:
        """Drop these keys from the cache (all of them for None): they were revoked elsewhere,
        or news of revocations may have been missed."""
        self._generation += 1
        if key_ids is None:
            self._cache.clear()
            return
        for key_id in key_ids:
            self._cache.pop(key_id, None)

    def _cached(self, key_id: str) -> ApiKeyRecord | None:
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._cache[key_id]
            return None
        self._cache.move_to_end(key_id)
        return entry.record

    def _remember(self, record: ApiKeyRecord) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        self._cache[record.key_id] = _CachedKey(record, self._clock() + self._ttl)
        self._cache.move_to_end(record.key_id)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
