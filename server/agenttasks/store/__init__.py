"""Storage backends behind the `agenttasks.core.ports.Store` protocol, chosen by URL.

    await open_store("agenttasks.db")                      # a plain path: SQLite
    await open_store("sqlite:///data/agenttasks.db")       # three slashes: relative path
    await open_store("sqlite:////var/lib/agenttasks.db")   # four slashes: absolute path
    await open_store(":memory:")                           # throwaway file, removed on close

The `sqlite:` form follows SQLAlchemy's convention, which most people already know. PostgreSQL
URLs are recognised and refused until that backend exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from agenttasks.core.ports import Store
from agenttasks.store.sqlite_store import SqliteStore
from agenttasks.store.sqlite_writer import WriterStats

__all__ = ["SqliteStore", "WriterStats", "open_store", "sqlite_path"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_MEMORY = ":memory:"


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names; None for `:memory:` (a throwaway store).

    Raises ValueError for URLs that are not SQLite, naming what to use instead.
    """
    if not url.strip():
        raise ValueError("the store URL is empty; give a file path or sqlite:///path")
    match = _SCHEME.match(url)
    if match is None:
        return None if url == _MEMORY else Path(url).expanduser()
    scheme = match[1].lower()
    if scheme in _POSTGRES_SCHEMES or scheme.startswith("postgresql+"):
        raise ValueError("PostgreSQL backend is not available yet")
    if scheme != "sqlite":
        raise ValueError(f"unsupported store URL scheme {match[1]!r}; use a file path or sqlite:///path")
    rest = url[match.end() :]
    if rest in ("", _MEMORY, "/" + _MEMORY):
        return None
    if not rest.startswith("/"):
        raise ValueError(f"a sqlite URL has no host part: write sqlite:///relative or sqlite:////absolute, not {url!r}")
    if not rest[1:]:
        raise ValueError(f"the sqlite URL {url!r} names no file")
    return Path(rest[1:]).expanduser()


async def open_store(url: str) -> Store:
    """Opens (creating and migrating as needed) the store that `url` names."""
    path = sqlite_path(url)
    if path is None:
        return await SqliteStore.open_temporary()
    return await SqliteStore.open(path)
