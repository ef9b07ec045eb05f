"""Versioned schema migrations of the SQLite backend.

Each file `sql/migrations/sqlite/NNNN_<name>.sql` is one migration. They run in version order,
each in its own `BEGIN IMMEDIATE` transaction together with the `schema_migrations` row that
records it: a crash mid-migration leaves the previous version intact, and two processes
opening one new file cannot both apply a migration (the second sees the first one's row once
it gets the write lock).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from agenttasks.core.model import utcnow
from agenttasks.store.sql import load_queries
from agenttasks.store.sqlite_tx import to_micros

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: str = "sqlite") -> list[Migration]:
    """The packaged migrations of `backend`, oldest first; versions must run 1, 2, 3, ..."""
    folder = resources.files("agenttasks.store.sql").joinpath("migrations", backend)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        # A gap or a duplicate means a file was misnamed; applying around it would leave two
        # installations with different schemas under the same version number.
        raise RuntimeError(f"{backend} migrations must be numbered 1..n without gaps, found {versions}")
    return found


def split_statements(script: str) -> list[str]:
    """Splits a script into statements with SQLite's own completeness test, so a `;` inside a
    string literal or a trigger body does not end a statement."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if _has_code(pending):
                statements.append(pending.strip())
            pending = ""
    if _has_code(pending):
        raise ValueError(f"unterminated statement at the end of a migration: {pending.strip()[:80]!r}")
    return statements


def _has_code(text: str) -> bool:
    return bool(_COMMENT_LINE.sub("", text).strip())


def applied_migrations(conn: sqlite3.Connection) -> dict[int, str]:
    """{version: name} of the migrations recorded in the database."""
    queries = load_queries("sqlite")
    conn.execute(queries["create_schema_migrations"])
    return {int(row[0]): str(row[1]) for row in conn.execute(queries["applied_migrations"])}


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Applies the migrations not yet recorded and returns the versions it applied.

    `conn` must be in autocommit mode (isolation_level=None): this manages its own transactions.
    Refuses a database that has a migration this code does not know, since that database was
    written by a newer server whose schema this one would misread.
    """
    queries = load_queries("sqlite")
    known = list(load_migrations() if migrations is None else migrations)
    recorded = applied_migrations(conn)
    unknown = sorted(set(recorded) - {m.version for m in known})
    if unknown:
        raise RuntimeError(
            f"the database has schema migrations {unknown} that this version of agenttasks does not "
            "know; it was written by a newer server"
        )
    applied: list[int] = []
    for migration in known:
        if migration.version in recorded:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-checked under the write lock: another process may have applied it meanwhile.
            if migration.version not in applied_migrations(conn):
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    queries["record_migration"],
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "applied_at": to_micros(utcnow()),
                    },
                )
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied
