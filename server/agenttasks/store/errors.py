"""Why a store could not be opened, said in one line a person can act on."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store a URL names cannot be opened: its backend's driver is not installed, its server
    cannot be reached, or (for commands that never create one) it has no agenttasks schema."""
