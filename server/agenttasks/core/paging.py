"""Opaque page tokens (AIP-158).

A token is the cursor encrypted and authenticated with a server key (Fernet), bound to the query
it came from: clients cannot read, forge or reuse it with other filters, so the cursor format can
change without breaking anyone. Tokens expire after a day; a stale one is a clear 400.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from agenttasks.core.errors import InvalidArgument, Why

TOKEN_TTL_SECONDS = 86400


class PageTokens:
    def __init__(self, secret: str) -> None:
        key = base64.urlsafe_b64encode(hashlib.sha256(("page-tokens:" + secret).encode()).digest())
        self._fernet = Fernet(key)

    def encode(self, query: dict[str, Any], cursor: list[Any]) -> str:
        body = json.dumps({"q": query, "c": cursor}, separators=(",", ":"), sort_keys=True)
        return self._fernet.encrypt(body.encode()).decode()

    def decode(self, token: str, query: dict[str, Any]) -> list[Any]:
        """The cursor in a token, after checking it belongs to this same query."""
        try:
            body = json.loads(self._fernet.decrypt(token.encode(), ttl=TOKEN_TTL_SECONDS))
        except (InvalidToken, ValueError, UnicodeError):
            raise InvalidArgument.field(
                "page_token", "invalid or expired; start again without it", Why.INVALID_PAGE_TOKEN
            ) from None
        if body.get("q") != json.loads(json.dumps(query)):
            raise InvalidArgument.field(
                "page_token", "belongs to a different query (filters changed)", Why.INVALID_PAGE_TOKEN
            )
        cursor: list[Any] = body["c"]
        return cursor
