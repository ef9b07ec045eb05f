"""API key format, hashing and parsing; storing and revoking keys in a real SQLite store."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from agenttasks.auth.api_keys import (
    create_api_key,
    new_api_key,
    parse_api_key,
    revoke_api_key,
    verify_secret,
)
from agenttasks.core.model import ApiKeyRecord, Role
from agenttasks.core.ports import ReadTx, Store
from agenttasks.store import open_store


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(str(tmp_path / "t.db"))
    try:
        yield opened
    finally:
        await opened.close()


async def _stored(store: Store, key_id: str) -> ApiKeyRecord | None:
    def get(tx: ReadTx) -> ApiKeyRecord | None:
        return tx.get_api_key(key_id)

    return await store.read(get)


def test_new_key_has_the_documented_format() -> None:
    key, record = new_api_key("acme", Role.CLIENT, "ci runner")
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "atk"
    assert len(key_id) == 16
    assert all(c in "0123456789abcdef" for c in key_id)
    assert len(secret) == 43  # secrets.token_urlsafe(32)
    assert parse_api_key(key) == (key_id, secret)
    assert (record.key_id, record.tenant, record.role, record.description) == (
        key_id,
        "acme",
        Role.CLIENT,
        "ci runner",
    )
    assert record.revoked_at is None
    assert record.created_at.tzinfo is not None


def test_record_holds_only_the_hash_of_the_secret() -> None:
    key, record = new_api_key("acme", Role.ADMIN)
    _, secret = parse_api_key(key) or ("", "")
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    for field in dataclasses.fields(record):
        assert secret not in str(getattr(record, field.name)), field.name
    assert key not in repr(record)


def test_keys_are_unique() -> None:
    keys = [new_api_key("acme", Role.CLIENT) for _ in range(50)]
    assert len({key for key, _ in keys}) == 50
    assert len({record.key_id for _, record in keys}) == 50


def test_role_may_be_given_as_its_value() -> None:
    assert new_api_key("acme", "worker")[1].role is Role.WORKER


@pytest.mark.parametrize(("tenant", "role"), [("", Role.CLIENT), ("acme", "root"), ("acme", "")])
def test_new_key_rejects_empty_tenant_and_unknown_role(tenant: str, role: str) -> None:
    with pytest.raises(ValueError):
        new_api_key(tenant, role)


def test_verify_secret() -> None:
    key, record = new_api_key("acme", Role.CLIENT)
    other_key, _ = new_api_key("acme", Role.CLIENT)
    secret = key.split("_", 2)[2]
    assert verify_secret(record, secret)
    assert not verify_secret(record, other_key.split("_", 2)[2])
    assert not verify_secret(record, secret[:-1])
    assert not verify_secret(record, "")


def test_secret_with_underscores_and_dashes_parses() -> None:
    text = "atk_0123456789abcdef_a_b-c__d-e_f-g_h_i_j_k_l_m"
    assert parse_api_key(text) == ("0123456789abcdef", "a_b-c__d-e_f-g_h_i_j_k_l_m")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "atk",
        "atk_",
        "atk__",
        "atk___",
        "atk_0123456789abcdef",
        "atk_0123456789abcdef_",
        "atk_0123456789abcdef_short",
        "ATK_0123456789abcdef_" + "s" * 43,
        "key_0123456789abcdef_" + "s" * 43,
        "atk_0123456789ABCDEF_" + "s" * 43,  # ids are lower-case hex
        "atk_0123456789abcdeg_" + "s" * 43,
        "atk_0123456789abcde_" + "s" * 43,
        "atk_0123456789abcdef0_" + "s" * 43,
        "atk_0123456789abcdef_" + "s" * 42 + "=",
        "atk_0123456789abcdef_" + "s" * 42 + " ",
        " atk_0123456789abcdef_" + "s" * 43,
        "atk_0123456789abcdef_" + "s" * 42 + "é",
        "atk_0123456789abcdef_" + "s" * 42 + "\x00",
        "atk_0123456789abcdef_" + "s" * 10_000,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2ln",
    ],
)
def test_malformed_keys_parse_to_none(text: str) -> None:
    assert parse_api_key(text) is None


@settings(database=None)
@given(st.text())
def test_parse_never_raises_and_round_trips(text: str) -> None:
    parsed = parse_api_key(text)
    if parsed is not None:
        assert f"atk_{parsed[0]}_{parsed[1]}" == text


@settings(database=None)
@given(st.text(alphabet="0123456789abcdef_-", max_size=30), st.text(max_size=60))
def test_parse_handles_near_miss_keys(key_id: str, secret: str) -> None:
    parsed = parse_api_key(f"atk_{key_id}_{secret}")
    if parsed is not None:
        assert parsed == (key_id, secret)


@pytest.mark.asyncio
async def test_create_stores_only_the_hash(store: Store) -> None:
    key = await create_api_key(store, "acme", Role.WORKER, "gpu box 3")
    key_id, secret = parse_api_key(key) or ("", "")
    record = await _stored(store, key_id)
    assert record is not None
    assert (record.tenant, record.role, record.description) == ("acme", Role.WORKER, "gpu box 3")
    assert verify_secret(record, secret)
    for field in dataclasses.fields(record):
        assert secret not in str(getattr(record, field.name)), field.name


@pytest.mark.asyncio
async def test_a_worker_key_may_be_scoped_to_one_agent(store: Store) -> None:
    agent = "0192F3A4-5B6C-7D8E-9F01-23456789ABCD"
    key = await create_api_key(store, "acme", Role.WORKER, agent_id=agent)
    record = await _stored(store, key.split("_", 2)[1])
    assert record is not None and record.agent_id == agent.lower()  # as hello's agent_id is read
    unscoped = await _stored(store, (await create_api_key(store, "acme", Role.WORKER)).split("_", 2)[1])
    assert unscoped is not None and unscoped.agent_id == ""  # any agent of the tenant
    for role in (Role.CLIENT, Role.ADMIN):
        with pytest.raises(ValueError, match="only a worker key"):
            await create_api_key(store, "acme", role, agent_id=agent)
    with pytest.raises(ValueError, match="must be an agent id"):
        await create_api_key(store, "acme", Role.WORKER, agent_id="agent-7")


@pytest.mark.asyncio
async def test_revoke(store: Store) -> None:
    key = await create_api_key(store, "acme", Role.CLIENT)
    key_id = key.split("_", 2)[1]
    assert await revoke_api_key(store, key_id) is True
    record = await _stored(store, key_id)
    assert record is not None
    assert record.revoked_at is not None


@pytest.mark.asyncio
async def test_revoke_unknown_key_says_so(store: Store) -> None:
    assert await revoke_api_key(store, "0123456789abcdef") is False
