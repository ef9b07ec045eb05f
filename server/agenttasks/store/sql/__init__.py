"""The SQL of each store backend, kept as named statements in one file per backend.

`<backend>.sql` is a series of blocks, each opened by a `-- name: <identifier>` line
(procrastinate's layout). One file lets a reviewer read every statement a backend runs, and
lets a test prepare each of them against the migrated schema; code refers to statements by name.
Versioned schema changes live apart, in `migrations/<backend>/`.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Mapping
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)[ \t]*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Splits a named-statement file into {name: sql}; text before the first name is a header."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        sql = body.strip()
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = sql
    return queries


@functools.cache
def load_queries(backend: str) -> Mapping[str, str]:
    """The named statements of `backend` ("sqlite"), read once per process and read-only."""
    text = resources.files(__name__).joinpath(f"{backend}.sql").read_text(encoding="utf-8")
    return types.MappingProxyType(parse_queries(text))
