"""Local admin commands that act on the database directly: API keys and tokens.

They need no running server and no credential (access to the database is the credential), so
an operator can always mint the first keys. SQLite in WAL mode lets them run beside `serve`;
on PostgreSQL they are one more client of the database.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from agenttasks.auth import create_api_key, issue_token, revoke_api_key, server_jwt_secret
from agenttasks.auth.api_keys import REVOCATION_POLL_SECONDS
from agenttasks.cli import render
from agenttasks.cli.client import CliError
from agenttasks.core.ids import agent_scope
from agenttasks.core.model import ApiKeyRecord, Role, utcnow
from agenttasks.core.ports import Store
from agenttasks.settings import Settings
from agenttasks.store import StoreUnavailable, open_store, postgres_url, shown_url, sqlite_path


async def _open(settings: Settings) -> Store:
    """The service's existing database, or one clear line saying why it cannot be opened.

    Unlike `serve`, admin commands never create a database: a mistyped --db would otherwise
    get a fresh file (or a fresh schema in some PostgreSQL database) and print a key or token
    that the running service has never heard of.
    """
    try:
        if postgres_url(settings.db) is None:
            path = sqlite_path(settings.db)
            if path is not None and not path.is_file():
                raise CliError(
                    f"no database at {settings.db}: pass the --db that 'agenttasks serve' uses "
                    "(or set AGENTTASKS_DB); serve creates it on first start"
                )
        return await open_store(settings.db, create=False)
    except StoreUnavailable as error:  # its message names the database without a password
        raise CliError(str(error)) from None
    except (ValueError, sqlite3.Error, OSError) as error:
        raise CliError(f"cannot open the database {shown_url(settings.db)}: {error}") from None


async def _keys_create(settings: Settings, tenant: str, role: Role, description: str, agent_id: str) -> str:
    store = await _open(settings)
    try:
        return await create_api_key(store, tenant, role, description, agent_id)
    finally:
        await store.close()


async def _keys_list(settings: Settings, tenant: str) -> list[ApiKeyRecord]:
    store = await _open(settings)
    try:
        return await store.read(lambda tx: tx.list_api_keys(tenant))
    finally:
        await store.close()


async def _keys_revoke(settings: Settings, key_id: str) -> bool:
    store = await _open(settings)
    try:
        return await revoke_api_key(store, key_id)
    finally:
        await store.close()


async def _token(settings: Settings, tenant: str, ttl: int, role: Role, agent_id: str, now: datetime) -> str:
    store = await _open(settings)
    try:
        secret = await server_jwt_secret(store, settings)
    finally:
        await store.close()
    return issue_token(
        secret,
        tenant,
        ttl,
        role,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        tenant_claim=settings.jwt_tenant_claim,
        role_claim=settings.jwt_role_claim,
        agent_id=agent_id,
        now=now,
    )


def _agent_scope(agent: str | None, role: str) -> str:
    """The --agent a worker credential is scoped to ("" for none), checked before anything is made."""
    if agent is None:
        return ""
    if role != Role.WORKER.value:
        raise CliError("--agent scopes a worker credential: use it with --role worker")
    try:
        scope = agent_scope(agent)
    except ValueError:
        scope = ""
    if not scope:  # not an id, or "" (which would quietly make an unscoped credential)
        raise CliError(f"--agent must be an agent id (a UUID), got {agent!r}")
    return scope


def _tenant(text: str) -> str:
    if not text.strip():
        raise CliError("--tenant must not be empty")
    return text.strip()


def keys_create(settings: Settings, args: argparse.Namespace) -> int:
    role, agent_id, tenant = Role(args.role), _agent_scope(args.agent, args.role), _tenant(args.tenant)
    key = asyncio.run(_keys_create(settings, tenant, role, args.description, agent_id))
    if args.json:
        made = {
            "api_key": key,
            "key_id": key.split("_")[1],
            "tenant": tenant,
            "role": role.value,
            "agent_id": agent_id,
            "description": args.description,
        }
        print(render.json_document(made))
    else:
        print(key)
    return 0


KEY_COLUMNS = ("key id", "role", "status", "agent", "created", "description")


def _key_json(k: ApiKeyRecord) -> dict[str, Any]:
    """A key's record without its secret's hash, with snake_case names and RFC 3339 times."""
    return {
        "key_id": k.key_id,
        "tenant": k.tenant,
        "role": k.role.value,
        "agent_id": k.agent_id,
        "description": k.description,
        "created_at": render.rfc3339(k.created_at),
        "revoked_at": render.rfc3339(k.revoked_at) if k.revoked_at else None,
    }


def keys_list(settings: Settings, args: argparse.Namespace) -> int:
    tenant = _tenant(args.tenant)
    keys = asyncio.run(_keys_list(settings, tenant))
    if args.json:
        print(render.json_document([_key_json(k) for k in keys]))
        return 0
    rows = [
        [
            k.key_id,
            k.role.value,
            "revoked" if k.revoked_at else "active",
            k.agent_id or "-",
            render.local_time(k.created_at),
            k.description,
        ]
        for k in keys
    ]
    render.print_table(KEY_COLUMNS, rows, f"no API keys for tenant {tenant}")
    return 0


def keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    key_id = args.key_id.split("_")[1] if args.key_id.startswith("atk_") else args.key_id
    if not asyncio.run(_keys_revoke(settings, key_id)):
        raise CliError(f"no API key with id {key_id}")
    # Running servers look for revocations this often: once this returns, none accepts the key.
    time.sleep(REVOCATION_POLL_SECONDS * 1.5)
    if args.json:
        print(render.json_document({"key_id": key_id, "revoked": True}))
    else:
        print(f"revoked {key_id}", file=sys.stderr)
    return 0


def token(settings: Settings, args: argparse.Namespace) -> int:
    # Whole seconds, as the token's claims carry them, so expires_at is exactly its `exp`.
    now = utcnow().replace(microsecond=0)
    try:
        agent_id = _agent_scope(args.agent, args.role)
        jwt = asyncio.run(_token(settings, _tenant(args.tenant), args.ttl, Role(args.role), agent_id, now))
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(render.json_document({"token": jwt, "expires_at": render.rfc3339(now + timedelta(seconds=args.ttl))}))
    else:
        print(jwt)
    return 0
