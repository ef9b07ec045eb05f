"""Copying a whole SQLite store into a new PostgreSQL database (`agenttasks store copy`).

For a user who outgrows the SQLite file and wants to keep their history: every tenant's agents,
tasks, events (the output is in them), API keys, idempotency records, webhook deliveries and
signing secrets, and the meta rows (the generated JWT and page-token secrets and the mark that
the first-start admin key was made, so tokens, page tokens and keys handed out keep working,
and the copy does not make a second admin key). Derived rows are not copied but made again:
PostgreSQL's queue counts by its triggers as each queued task goes in, its schema_migrations by
its own migrations.

The source is opened the way `serve` opens it, so its pending migrations are applied first,
then read in one transaction (one snapshot, even beside a running server). The target is
migrated and written in ONE PostgreSQL transaction, in batches of rows: a failure or an
interrupt leaves it as it was, and a big store is never held in memory. That transaction takes
the migration lock first and keeps it to the end, so a `serve` started on the target meanwhile
waits for the copy instead of writing beside it. A target that already holds any tenant's data
is refused: copying into it would mix two histories.

Rows go through the shared codec (`rows.py`): decoded as the SQLite backend decodes them, then
encoded as the PostgreSQL backend encodes them, so no column is converted here by hand.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from agenttasks.store import postgres_url, shown_url, sqlite_path
from agenttasks.store.migrations import migrate as migrate_sqlite
from agenttasks.store.postgres_migrations import migrate as migrate_postgres
from agenttasks.store.postgres_tx import aware
from agenttasks.store.rows import Row, Rows, check_object
from agenttasks.store.sql import load_queries
from agenttasks.store.sqlite_store import connect as connect_sqlite
from agenttasks.store.sqlite_tx import from_micros, to_micros

BATCH_ROWS = 1000
"""Rows read and written at a time: memory stays bounded, and each batch is one round of
pipelined inserts."""

CONNECT_TIMEOUT_SECONDS = 10

TABLES = (
    "agents",
    "tasks",
    "task_events",
    "api_keys",
    "idempotency",
    "webhook_deliveries",
    "signing_secrets",
    "meta",
)
"""What is copied, in the order it is: parents before the rows whose foreign keys name them."""

Progress = Callable[[str, int, int], None]
"""Told (table, rows copied so far, rows the table has) after each batch, and once when a table
is done (then copied == total, also for an empty table)."""

_SQLITE_ROWS = Rows(time_out=to_micros, time_in=from_micros, object_in=lambda text: check_object(json.loads(text)))
# Only the encoding half is used; timestamptz comes back aware, which is what `aware` checks.
_POSTGRES_ROWS = Rows(time_out=aware, time_in=aware, object_in=check_object)


def _task_params(row: Row) -> dict[str, Any]:
    task = _SQLITE_ROWS.task(row)  # the record carries seq; the backend's params leave it out
    return {**_POSTGRES_ROWS.task_params(task), "seq": task.seq}


# table -> (the postgresql.sql statement that writes a row, how a SQLite row becomes its params)
_WRITES: dict[str, tuple[str, Callable[[Row], dict[str, Any]]]] = {
    "agents": ("insert_agent", lambda row: _POSTGRES_ROWS.agent_params(_SQLITE_ROWS.agent(row))),
    # Keeping the task's seq (its place in its agent's FIFO and the cursor of task lists), as the
    # writer's numbered insert does; the queue-count trigger counts each queued task as it goes in.
    "tasks": ("insert_task_numbered", _task_params),
    "task_events": ("append_event", lambda row: _POSTGRES_ROWS.event_params(_SQLITE_ROWS.event(row))),
    "api_keys": ("put_api_key", lambda row: _POSTGRES_ROWS.api_key_params(_SQLITE_ROWS.api_key(row))),
    "idempotency": ("put_idempotency", lambda row: _POSTGRES_ROWS.idempotency_params(_SQLITE_ROWS.idempotency(row))),
    "webhook_deliveries": ("insert_delivery", lambda row: _POSTGRES_ROWS.delivery_params(_SQLITE_ROWS.delivery(row))),
    "signing_secrets": (
        "put_signing_secret",
        lambda row: _POSTGRES_ROWS.signing_secret_params(_SQLITE_ROWS.signing_secret(row)),
    ),
    "meta": ("set_meta", lambda row: {"name": row["name"], "value": row["value"]}),
}


class CopyRefused(Exception):
    """The copy was not made, and the target is as it was; the message is one line a person can
    act on (it never shows a password)."""


def copy_store(
    source: str,
    target: str,
    *,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copies the SQLite store `source` (a path or sqlite:/// URL) into the PostgreSQL database
    `target` (a postgresql:// URL), migrating both first; returns the rows copied per table, in
    copy order. Raises CopyRefused when it cannot or must not copy. Blocking: call it from a
    thread of its own, or from a command line."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    pg_url = target_url(target)
    path = source_file(source)
    _migrate_source(path)
    try:
        pg = psycopg.connect(pg_url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.OperationalError as error:
        raise CopyRefused(f"cannot connect to PostgreSQL at {shown_url(target)}: {_first_line(error)}") from None
    try:
        reader = connect_sqlite(path, read_only=True)
    except sqlite3.Error as error:
        pg.close()
        raise CopyRefused(f"cannot read the SQLite database {path}: {error}") from None
    try:
        return _copy(reader, pg, target, batch_rows, progress or _silent)
    except psycopg.Error as error:
        raise CopyRefused(
            f"the copy into {shown_url(target)} failed and was rolled back: {_first_line(error)}"
        ) from None
    except sqlite3.Error as error:
        raise CopyRefused(f"reading {path} failed, and the copy was rolled back: {error}") from None
    finally:
        reader.close()
        pg.close()


def source_file(source: str) -> Path:
    """The SQLite file `source` names; CopyRefused if it names anything else or no file."""
    try:
        if postgres_url(source) is not None:
            raise CopyRefused(f"the source must be a SQLite store (a file or sqlite:///path), not {shown_url(source)}")
        path = sqlite_path(source)
    except ValueError as error:
        raise CopyRefused(f"the source must be a SQLite store: {error}") from None
    if path is None:
        raise CopyRefused("the source must be a SQLite file; :memory: holds nothing to copy")
    if not path.is_file():
        raise CopyRefused(f"no SQLite database at {path}: give the file 'agenttasks serve --db' uses")
    return path


def target_url(target: str) -> str:
    """The libpq URL of the PostgreSQL target; CopyRefused for anything else."""
    try:
        pg_url = postgres_url(target)
    except ValueError as error:
        raise CopyRefused(str(error)) from None
    if pg_url is None:
        raise CopyRefused(f"the target must be a postgresql://user@host/dbname URL, not {target!r}")
    return pg_url


def _migrate_source(path: Path) -> None:
    """Brings the source to the newest SQLite schema, as `serve` would on its next start, so the
    rows read have every column the codec expects."""
    try:
        conn = connect_sqlite(path)
    except sqlite3.Error as error:
        raise CopyRefused(f"cannot open the SQLite database {path}: {error}") from None
    try:
        migrate_sqlite(conn)
    except (sqlite3.Error, RuntimeError) as error:  # not a database; written by a newer agenttasks
        raise CopyRefused(f"cannot bring {path} up to date: {error}") from None
    finally:
        conn.close()


def _copy(
    reader: sqlite3.Connection,
    pg: psycopg.Connection[dict[str, Any]],
    target: str,
    batch_rows: int,
    progress: Progress,
) -> dict[str, int]:
    source_sql = load_queries("copy_sqlite")
    reader.execute("BEGIN")  # one snapshot for every table, even while a server writes the file
    try:
        totals = {table: int(reader.execute(source_sql[f"count_{table}"]).fetchone()[0]) for table in TABLES}
        last_seq = int(reader.execute(source_sql["last_task_seq"]).fetchone()["last_seq"])
        with pg.transaction():
            # Nested in ours, the migration's own transaction is a savepoint: the schema commits
            # with the rows or not at all, and its advisory lock is held until then.
            migrate_postgres(pg)
            found = [row["name"] for row in pg.execute(load_queries("copy_postgresql")["tables_with_rows"])]
            if found:
                raise CopyRefused(
                    f"the PostgreSQL database {shown_url(target)} already holds agenttasks data "
                    f"({', '.join(found)}); copy into a new, empty database"
                )
            copied = {table: _copy_table(reader, pg, table, totals[table], batch_rows, progress) for table in TABLES}
            if last_seq > 0:
                pg.execute(load_queries("copy_postgresql")["continue_task_seq"], {"last_seq": last_seq})
    finally:
        if reader.in_transaction:
            reader.execute("ROLLBACK")
    return copied


def _copy_table(
    reader: sqlite3.Connection,
    pg: psycopg.Connection[dict[str, Any]],
    table: str,
    total: int,
    batch_rows: int,
    progress: Progress,
) -> int:
    name, params_of = _WRITES[table]
    statement = load_queries("postgresql")[name]
    done = 0
    with pg.cursor() as cursor:
        for batch in _batches(reader.execute(load_queries("copy_sqlite")[f"all_{table}"]), batch_rows):
            cursor.executemany(statement, [params_of(row) for row in batch])
            done += len(batch)
            if done < total:
                progress(table, done, total)
    progress(table, done, done)  # the snapshot holds exactly `total` rows; `done` is the truth
    return done


def _batches(cursor: sqlite3.Cursor, size: int) -> Iterator[list[Any]]:
    while batch := cursor.fetchmany(size):
        yield batch


def _silent(table: str, done: int, total: int) -> None:
    """No progress wanted."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
