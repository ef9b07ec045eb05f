"""Versioned schema migrations of the PostgreSQL backend.

Each file `sql/migrations/postgresql/NNNN_<name>.sql` is one migration, run whole (PostgreSQL
takes a script of several statements, function bodies and all). Migrating happens in one
transaction that first takes a transaction-scoped advisory lock: servers started at once on a
new database take turns, and each after the first finds the work done. PostgreSQL's DDL is
transactional, so a failing migration leaves the schema as it was, versions and all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from agenttasks.core.model import utcnow
from agenttasks.store.migrations import Migration, load_migrations
from agenttasks.store.sql import load_queries

# pg_advisory_xact_lock's key for "migrating the agenttasks schema": any fixed bigint, unlikely
# to be another application's (b"agntasks" as a big-endian integer).
MIGRATION_LOCK_KEY = int.from_bytes(b"agntasks", "big")


def has_schema(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database (as the connection's search_path sees it) has an agenttasks schema."""
    return bool(_tuples(conn, load_queries("postgresql")["has_schema"])[0][0])


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[Migration] | None = None) -> list[int]:
    """Applies the migrations not yet recorded and returns the versions it applied.

    `conn` must be in autocommit mode: this runs its own transaction. Refuses a database that
    has a migration this code does not know, since that database was written by a newer server
    whose schema this one would misread.
    """
    queries = load_queries("postgresql")
    known = list(load_migrations("postgresql") if migrations is None else migrations)
    applied: list[int] = []
    with conn.transaction():
        conn.execute(queries["lock_migrations"], {"key": MIGRATION_LOCK_KEY})
        conn.execute(queries["create_schema_migrations"])
        recorded = {int(row[0]): str(row[1]) for row in _tuples(conn, queries["applied_migrations"])}
        unknown = sorted(set(recorded) - {m.version for m in known})
        if unknown:
            raise RuntimeError(
                f"the database has schema migrations {unknown} that this version of agenttasks does not "
                "know; it was written by a newer server"
            )
        for migration in known:
            if migration.version in recorded:
                continue
            conn.execute(migration.sql.encode())  # bytes: run as written, no placeholders
            conn.execute(
                queries["record_migration"],
                {"version": migration.version, "name": migration.name, "applied_at": utcnow()},
            )
            applied.append(migration.version)
    return applied


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """{version: name} of the migrations recorded in the database ({} before the first)."""
    if not has_schema(conn):
        return {}
    return {int(row[0]): str(row[1]) for row in _tuples(conn, load_queries("postgresql")["applied_migrations"])}


def _tuples(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cursor:
        return cursor.execute(query).fetchall()
