"""Storage backends behind the `agenttasks.core.ports.Store` protocol, chosen by URL.

    await open_store("agenttasks.db")                      # a plain path: SQLite
    await open_store("sqlite:///data/agenttasks.db")       # three slashes: relative path
    await open_store("sqlite:////var/lib/agenttasks.db")   # four slashes: absolute path
    await open_store(":memory:")                           # throwaway file, removed on close
    await open_store("postgresql://user@host:5432/dbname") # PostgreSQL (also postgres://)

The `sqlite:` form follows SQLAlchemy's convention, which most people already know; so does
`postgresql+psycopg://`, taken as `postgresql://`. A PostgreSQL URL is handed to libpq as it is,
so its query parameters (sslmode=require, options=..., ...) work as libpq documents them.

The PostgreSQL backend needs psycopg, an optional dependency (`pip install
'agenttasks[postgres]'`); it is imported only when a PostgreSQL URL is opened.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from agenttasks.core.ports import Store
from agenttasks.store.errors import StoreUnavailable
from agenttasks.store.sqlite_store import SqliteStore
from agenttasks.store.sqlite_writer import WriterStats

if TYPE_CHECKING:
    from agenttasks.store.postgres_store import PostgresStore

__all__ = [
    "SqliteStore",
    "StoreUnavailable",
    "WriterStats",
    "open_store",
    "postgres_url",
    "shown_url",
    "sqlite_path",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}
_MEMORY = ":memory:"
INSTALL_HINT = "pip install 'agenttasks[postgres]'"
_PASSWORD_IN_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:)[^/?#@]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def postgres_url(url: str) -> str | None:
    """The libpq URL a store URL names if it is a PostgreSQL one, else None (a SQLite one).

    Raises ValueError for a PostgreSQL URL in a form libpq would not take.
    """
    match = _SCHEME.match(url.strip())
    if match is None:
        return None
    scheme = match[1].lower()
    if scheme in _POSTGRES_SCHEMES:
        return "postgresql://" + url.strip()[match.end() :]
    if scheme.startswith(("postgresql+", "postgres+")):
        raise ValueError(f"unsupported PostgreSQL driver in {match[1]!r}: write postgresql://user@host/dbname")
    return None


def shown_url(url: str) -> str:
    """The store URL as it may be printed or logged: a PostgreSQL password (in the URL or as a
    `password=` parameter) becomes `***`; a SQLite path is shown as given."""
    if postgres_url(url) is None:
        return url
    url = _PASSWORD_IN_USERINFO.sub(r"\1***@", url)
    return _PASSWORD_PARAMETER.sub(r"\1***", url)


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names; None for `:memory:` (a throwaway store).

    Raises ValueError for URLs that are not SQLite, naming what to use instead.
    """
    if not url.strip():
        raise ValueError("the store URL is empty; give a file path, sqlite:///path or postgresql://...")
    match = _SCHEME.match(url)
    if match is None:
        return None if url == _MEMORY else Path(url).expanduser()
    scheme = match[1].lower()
    if scheme in _POSTGRES_SCHEMES or scheme.startswith(("postgresql+", "postgres+")):
        raise ValueError(f"{match[1]}:// names a PostgreSQL database, not a SQLite file")
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported store URL scheme {match[1]!r}; use a file path, sqlite:///path or postgresql://..."
        )
    rest = url[match.end() :]
    if rest in ("", _MEMORY, "/" + _MEMORY):
        return None
    if not rest.startswith("/"):
        raise ValueError(f"a sqlite URL has no host part: write sqlite:///relative or sqlite:////absolute, not {url!r}")
    if not rest[1:]:
        raise ValueError(f"the sqlite URL {url!r} names no file")
    return Path(rest[1:]).expanduser()


def postgres_backend() -> type[PostgresStore]:
    """The PostgreSQL store class; StoreUnavailable, with the install hint, without its driver."""
    try:
        import psycopg  # noqa: F401 - imported to find out whether it can be
        import psycopg_pool  # noqa: F401
    except ImportError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StoreUnavailable(
            f"the PostgreSQL backend needs psycopg and psycopg_pool ({first_line}): {INSTALL_HINT}"
        ) from None
    from agenttasks.store.postgres_store import PostgresStore

    return PostgresStore


async def open_store(url: str, *, create: bool = True) -> Store:
    """Opens (migrating as needed) the store that `url` names.

    With create=True (`serve`) a missing SQLite file, or a PostgreSQL database without the
    agenttasks schema, is set up; with create=False (admin commands) it is refused with
    StoreUnavailable, so that a mistyped URL cannot get a store of its own.
    """
    if (pg_url := postgres_url(url)) is not None:
        return await postgres_backend().open(pg_url, create=create)
    path = sqlite_path(url)
    if path is None:
        return await SqliteStore.open_temporary()
    if not create and not path.is_file():
        raise StoreUnavailable(f"no SQLite database at {path}")
    return await SqliteStore.open(path)
