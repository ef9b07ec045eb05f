"""The authenticator against a real SQLite store: headers, API keys, JWTs, the key cache, and
the generated server secret."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

import agenttasks.auth
from agenttasks.auth import Authenticator, create_api_key, issue_token, revoke_api_key, server_jwt_secret
from agenttasks.auth.authenticator import INVALID_API_KEY, MALFORMED_API_KEY, MISSING_CREDENTIALS
from agenttasks.auth.secrets_store import META_NAME
from agenttasks.core.errors import Unauthenticated
from agenttasks.core.model import Principal, Role, utcnow
from agenttasks.core.ports import ReadTx, Store, WriteTx
from agenttasks.settings import Settings
from agenttasks.store import open_store

T = TypeVar("T")
SECRET = "s" * 43


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": None,
        "jwt_public_key": None,
        "jwt_issuer": None,
        "jwt_audience": None,
        "jwt_tenant_claim": "sub",
        "jwt_role_claim": "role",
        "jwt_leeway_seconds": 30,
    }
    values.update(overrides)
    return Settings(**values)


class CountingStore:
    """The real store, counting reads, to show when the authenticator skips the database."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.reads = 0

    async def read(self, fn: Callable[[ReadTx], T]) -> T:
        self.reads += 1
        return await self.inner.read(fn)

    async def write(self, fn: Callable[[WriteTx], T]) -> T:
        return await self.inner.write(fn)

    async def close(self) -> None:
        await self.inner.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = CountingStore(await open_store(str(tmp_path / "t.db")))
    try:
        yield opened
    finally:
        await opened.close()


def _uncached(store: Store) -> Authenticator:
    return Authenticator(store, _settings(), SECRET, api_key_cache_ttl=0)


async def _rejected(auth: Authenticator, metadata: dict[str, str]) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(metadata)
    return caught.value.message


# --- headers ---


@pytest.mark.asyncio
async def test_missing_credentials(store: CountingStore) -> None:
    auth = _uncached(store)
    assert await _rejected(auth, {}) == MISSING_CREDENTIALS
    assert await _rejected(auth, {"x-other": "atk_x"}) == MISSING_CREDENTIALS
    assert MISSING_CREDENTIALS == ("missing credentials: send 'authorization: Bearer <token>' or 'x-api-key: <key>'")


@pytest.mark.asyncio
async def test_api_key_in_x_api_key(store: CountingStore) -> None:
    key = await create_api_key(store, "acme", Role.WORKER)
    principal = await _uncached(store).authenticate({"x-api-key": key})
    assert principal == Principal(tenant="acme", role=Role.WORKER, subject=key.split("_", 2)[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_api_key_as_bearer_token(store: CountingStore, scheme: str) -> None:
    key = await create_api_key(store, "acme", Role.ADMIN)
    principal = await _uncached(store).authenticate({"authorization": f"{scheme} {key}"})
    assert principal == Principal(tenant="acme", role=Role.ADMIN, subject=key.split("_", 2)[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_jwt_as_bearer_token(store: CountingStore, scheme: str) -> None:
    token = issue_token(SECRET, "acme", 60, role=Role.WORKER)
    principal = await _uncached(store).authenticate({"authorization": f"{scheme} {token}"})
    assert principal == Principal(tenant="acme", role=Role.WORKER, subject="acme")
    assert store.reads == 0


@pytest.mark.asyncio
async def test_surrounding_whitespace_is_tolerated(store: CountingStore) -> None:
    key = await create_api_key(store, "acme", Role.CLIENT)
    auth = _uncached(store)
    assert (await auth.authenticate({"authorization": f"  Bearer   {key} "})).tenant == "acme"
    assert (await auth.authenticate({"x-api-key": f" {key}\t"})).tenant == "acme"


@pytest.mark.asyncio
async def test_authorization_wins_over_x_api_key(store: CountingStore) -> None:
    client_key = await create_api_key(store, "acme", Role.CLIENT)
    admin_key = await create_api_key(store, "other", Role.ADMIN)
    auth = _uncached(store)
    both = {"authorization": f"Bearer {client_key}", "x-api-key": admin_key}
    assert (await auth.authenticate(both)).role is Role.CLIENT
    jwt_and_key = {"authorization": f"Bearer {issue_token(SECRET, 'jwt-tenant', 60)}", "x-api-key": admin_key}
    assert (await auth.authenticate(jwt_and_key)).tenant == "jwt-tenant"
    # A bad authorization header is not rescued by a good x-api-key.
    bad_and_good = {"authorization": "Bearer nonsense", "x-api-key": admin_key}
    assert await _rejected(auth, bad_and_good) == "token is invalid"


@pytest.mark.asyncio
@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc"])
async def test_malformed_authorization_header(store: CountingStore, value: str) -> None:
    message = await _rejected(_uncached(store), {"authorization": value})
    assert message == "malformed authorization header: expected 'Bearer <token>'"


@pytest.mark.asyncio
async def test_key_without_scheme_is_not_echoed(store: CountingStore) -> None:
    key = await create_api_key(store, "acme", Role.ADMIN)
    message = await _rejected(_uncached(store), {"authorization": key})
    assert key not in message
    assert key.split("_", 2)[2] not in message


@pytest.mark.asyncio
async def test_jwt_in_x_api_key_gets_a_hint(store: CountingStore) -> None:
    token = issue_token(SECRET, "acme", 60)
    message = await _rejected(_uncached(store), {"x-api-key": token})
    assert "authorization: Bearer" in message


@pytest.mark.asyncio
async def test_bad_jwt_is_unauthenticated(store: CountingStore) -> None:
    auth = _uncached(store)
    expired = issue_token(SECRET, "acme", 60, now=utcnow() - timedelta(hours=1))
    assert await _rejected(auth, {"authorization": f"Bearer {expired}"}) == "token has expired"
    forged = issue_token("f" * 43, "acme", 60, role=Role.ADMIN)
    assert await _rejected(auth, {"authorization": f"Bearer {forged}"}) == "token signature is invalid"


# --- API keys ---


@pytest.mark.asyncio
async def test_unknown_revoked_and_wrong_secret_look_the_same(store: CountingStore) -> None:
    auth = _uncached(store)
    key = await create_api_key(store, "acme", Role.CLIENT)
    _, key_id, secret = key.split("_", 2)

    unknown = f"atk_{'0' * 16}_{secret}"
    wrong_secret = f"atk_{key_id}_{'x' * 43}"
    messages = [
        await _rejected(auth, {"x-api-key": unknown}),
        await _rejected(auth, {"x-api-key": wrong_secret}),
    ]

    assert (await auth.authenticate({"x-api-key": key})).tenant == "acme"
    assert await revoke_api_key(store, key_id)
    messages.append(await _rejected(auth, {"x-api-key": key}))
    messages.append(await _rejected(auth, {"authorization": f"Bearer {key}"}))

    assert messages == [INVALID_API_KEY] * 4


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "text",
    [
        "atk_",
        "atk_nothex0123456789_" + "s" * 43,
        "atk_0123456789abcdef",
        "atk_0123456789abcdef_" + "s" * 42 + "!",
        "atk_0123456789abcdef_" + "s" * 5000,
        "atk_0123456789abcdef_" + "é" * 43,
        "sk-live-0123456789",
        "",
    ],
)
async def test_malformed_keys_are_rejected_without_a_lookup(store: CountingStore, text: str) -> None:
    auth = _uncached(store)
    assert await _rejected(auth, {"x-api-key": text}) == MALFORMED_API_KEY
    if text:
        assert await _rejected(auth, {"authorization": f"Bearer {text}"}) in {
            MALFORMED_API_KEY,
            "token is invalid",
        }
    assert store.reads == 0


# --- the cache ---


@pytest.mark.asyncio
async def test_verified_keys_are_cached_for_the_ttl(store: CountingStore) -> None:
    clock = FakeClock()
    auth = Authenticator(store, _settings(), SECRET, api_key_cache_ttl=5, clock=clock)
    key = await create_api_key(store, "acme", Role.CLIENT)

    await auth.authenticate({"x-api-key": key})
    await auth.authenticate({"x-api-key": key})
    assert store.reads == 1

    clock.now += 5
    await auth.authenticate({"x-api-key": key})
    assert store.reads == 2


@pytest.mark.asyncio
async def test_revocation_takes_effect_when_the_entry_expires(store: CountingStore) -> None:
    clock = FakeClock()
    auth = Authenticator(store, _settings(), SECRET, api_key_cache_ttl=5, clock=clock)
    key = await create_api_key(store, "acme", Role.CLIENT)
    await auth.authenticate({"x-api-key": key})

    assert await revoke_api_key(store, key.split("_", 2)[1])
    clock.now += 4.9
    assert (await auth.authenticate({"x-api-key": key})).tenant == "acme"  # the documented window
    clock.now += 0.1
    assert await _rejected(auth, {"x-api-key": key}) == INVALID_API_KEY


@pytest.mark.asyncio
async def test_cached_key_still_checks_the_secret(store: CountingStore) -> None:
    auth = Authenticator(store, _settings(), SECRET, api_key_cache_ttl=3600, clock=FakeClock())
    key = await create_api_key(store, "acme", Role.ADMIN)
    await auth.authenticate({"x-api-key": key})
    key_id = key.split("_", 2)[1]
    assert await _rejected(auth, {"x-api-key": f"atk_{key_id}_{'x' * 43}"}) == INVALID_API_KEY
    assert store.reads == 1


@pytest.mark.asyncio
async def test_failures_are_not_cached(store: CountingStore) -> None:
    auth = Authenticator(store, _settings(), SECRET, api_key_cache_ttl=3600, clock=FakeClock())
    unknown = f"atk_{'0' * 16}_{'x' * 43}"
    await _rejected(auth, {"x-api-key": unknown})
    await _rejected(auth, {"x-api-key": unknown})
    assert store.reads == 2


@pytest.mark.asyncio
async def test_cache_is_bounded_and_drops_the_least_recently_used(store: CountingStore) -> None:
    auth = Authenticator(store, _settings(), SECRET, api_key_cache_ttl=3600, api_key_cache_size=2, clock=FakeClock())
    first, second, third = [await create_api_key(store, "acme", Role.CLIENT) for _ in range(3)]
    for key in (first, second, first, third):  # `second` is now the least recently used
        await auth.authenticate({"x-api-key": key})
    assert store.reads == 3

    await auth.authenticate({"x-api-key": first})
    await auth.authenticate({"x-api-key": third})
    assert store.reads == 3
    await auth.authenticate({"x-api-key": second})
    assert store.reads == 4


@pytest.mark.asyncio
async def test_ttl_zero_reads_every_time(store: CountingStore) -> None:
    auth = _uncached(store)
    key = await create_api_key(store, "acme", Role.CLIENT)
    for _ in range(3):
        await auth.authenticate({"x-api-key": key})
    assert store.reads == 3


def test_negative_cache_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Authenticator(None, _settings(), SECRET, api_key_cache_ttl=-1)  # type: ignore[arg-type]


# --- the generated server secret ---


@pytest.mark.asyncio
async def test_configured_secret_is_used_as_is(store: CountingStore) -> None:
    assert await server_jwt_secret(store, _settings(jwt_secret=SECRET)) == SECRET
    assert await store.read(lambda tx: tx.get_meta(META_NAME)) is None


@pytest.mark.asyncio
async def test_generated_secret_is_kept_in_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first_store = await open_store(path)
    try:
        first = await server_jwt_secret(first_store, _settings())
        assert await server_jwt_secret(first_store, _settings()) == first
        assert await first_store.read(lambda tx: tx.get_meta(META_NAME)) == first
    finally:
        await first_store.close()
    reopened = await open_store(path)
    try:
        assert await server_jwt_secret(reopened, _settings()) == first
    finally:
        await reopened.close()
    assert len(first.encode()) >= 32


@pytest.mark.asyncio
async def test_concurrent_first_use_agrees_on_one_secret(tmp_path: Path) -> None:
    # Two stores on one file stand in for the server and `agenttasks token` starting together.
    path = str(tmp_path / "race.db")
    stores = [await open_store(path), await open_store(path)]
    try:
        results = await asyncio.gather(*(server_jwt_secret(s, _settings()) for s in stores for _ in range(4)))
    finally:
        for s in stores:
            await s.close()
    assert len(set(results)) == 1


@pytest.mark.asyncio
async def test_token_minted_with_the_generated_secret_is_accepted(store: CountingStore) -> None:
    secret = await server_jwt_secret(store, _settings())
    auth = Authenticator(store, _settings(), secret)
    token = issue_token(secret, "acme", 60, role=Role.ADMIN)
    assert await auth.authenticate({"authorization": f"Bearer {token}"}) == Principal(
        tenant="acme", role=Role.ADMIN, subject="acme"
    )


# --- the package surface ---


def test_public_names_are_pinned() -> None:
    assert sorted(agenttasks.auth.__all__) == [
        "Authenticator",
        "JwtVerifier",
        "allowed_roles",
        "authorize",
        "create_api_key",
        "hash_secret",
        "issue_token",
        "new_api_key",
        "parse_api_key",
        "revoke_api_key",
        "server_jwt_secret",
        "verify_secret",
    ]


def test_auth_does_not_import_grpc() -> None:
    code = "import sys, agenttasks.auth; sys.exit(any(m.split('.')[0] == 'grpc' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
