"""`agenttasks store ...`: commands on a whole store, run where the database files are.

`store copy SRC DST` moves a SQLite store into a new PostgreSQL database (store/copy.py does the
copying; this is its face): progress on stderr, one summary line (or `--json`) on stdout. The
parser imports this module for its help, so the store is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from agenttasks.cli import render
from agenttasks.cli.client import CliError
from agenttasks.settings import Settings

GROUP_HELP = "Whole-store operations, on the database directly (no server needed)."

COPY_HELP = "Copy a whole SQLite store into a new, empty PostgreSQL database."

COPY_DESCRIPTION = """\
Copy a whole SQLite store into a new, empty PostgreSQL database, for moving up from the SQLite
file without losing anything: every tenant's agents, tasks with their events and output, API
keys, idempotency records, webhook deliveries and signing secrets, and the server's generated
secrets, so existing keys, tokens and page tokens keep working on the copy.

SRC is migrated as 'agenttasks serve' would migrate it and read as one snapshot; stop the
server first, or what it writes after the snapshot is not copied. DST gets the agenttasks
schema if it has none, and is refused if it already holds any tenant's data. The copy is one
PostgreSQL transaction: if anything fails (or you press Ctrl-C), DST is left as it was.
Progress goes to stderr; a summary of the rows copied per table to stdout.
"""

COPY_EPILOG = """\
example:
  agenttasks store copy agenttasks.db postgresql://agenttasks@db.internal/agenttasks
  agenttasks serve --db postgresql://agenttasks@db.internal/agenttasks

exit status: 0 copied; 1 refused or failed (DST unchanged); 2 usage error.
"""

PROGRESS_SECONDS = 2.0
"""A long table says how far it got at most this often."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = COPY_DESCRIPTION
    p.epilog = COPY_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "source",
        metavar="SRC",
        help="the SQLite store to copy: a file path or sqlite:///path, as 'serve --db' takes it",
    )
    p.add_argument(
        "target",
        metavar="DST",
        help="the PostgreSQL database to copy into: postgresql://user@host:5432/dbname (it must exist)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"source": ..., "target": ..., "copied": {TABLE: ROWS, ...}} instead of the summary line',
    )


class ProgressLines:
    """Progress on a stream: every table's count when it is done, and how far a long one got
    every `every` seconds meanwhile."""

    def __init__(self, out: TextIO, every: float = PROGRESS_SECONDS) -> None:
        self._out = out
        self._every = every
        self._last = time.monotonic()

    def __call__(self, table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total:
            print(f"copied {table}: {done} rows", file=self._out, flush=True)
        elif now - self._last >= self._every:
            print(f"copying {table}: {done} of {total} rows", file=self._out, flush=True)
        else:
            return
        self._last = now


def summary(copied: dict[str, int], target: str) -> str:
    """`copied N agents, ... into URL` on one line."""
    from agenttasks.store import shown_url

    counts = ", ".join(f"{rows} {table}" for table, rows in copied.items())
    return f"copied {counts} into {shown_url(target)}"


def copy(settings: Settings, args: argparse.Namespace) -> int:
    from agenttasks.store import StoreUnavailable, postgres_backend, shown_url

    try:
        postgres_backend()  # before importing the copy, which needs psycopg: the install hint
    except StoreUnavailable as error:
        raise CliError(str(error)) from None
    from agenttasks.store.copy import CopyRefused, copy_store

    try:
        copied = copy_store(args.source, args.target, progress=ProgressLines(sys.stderr))
    except CopyRefused as error:
        raise CliError(str(error)) from None
    if args.json:
        print(
            render.json_document({"source": shown_url(args.source), "target": shown_url(args.target), "copied": copied})
        )
    else:
        print(summary(copied, args.target))
    return 0
