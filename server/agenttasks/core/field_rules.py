"""What each field a client sends must be: the one table the checks and the API document share.

The server's checks (`validation`, `ids`) read their bounds, lengths and character sets from
here, and scripts/gen_openapi.py renders the same rows as JSON Schema keywords in
docs/openapi.json, so a client generated from the document knows the limits the server
enforces and the two cannot drift (tests/docs/test_openapi.py holds them side by side).

The document may only be stricter than the server, never looser: a request the schema allows
must be accepted (schemathesis' positive_data_acceptance checks it). Where JSON Schema cannot
say the server's rule exactly, the rule carries a safe bound as well, e.g. a limit in UTF-8
bytes is declared as the number of characters that can never exceed it.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

from agenttasks.core.model import AgentStatus, CallbackMode, TaskStatus

MAX_URL_LENGTH = 2048
MAX_REQUEST_ID_LENGTH = 128
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 4096
DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 1, 10
MAX_ATTEMPTS = 100
MAX_INPUT_TIMEOUT_SECONDS = 30 * 86400
MAX_BATCH = 500
MAX_PAGE_SIZE = 500
INT32_MAX = 2**31 - 1
# A sequence number as a query parameter: int64, whose 18 digits can never overflow it.
MAX_SEQUENCE_DIGITS = 18
UTF8_MAX_BYTES_PER_CHAR = 4
ANY_AGENT = "-"
"""Stands for any agent in a task's path, for clients that know only the task's id."""

REQUEST_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:~/+=")
_REQUEST_ID_CLASS = r"A-Za-z0-9\-_.:~/+="

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Characters text fields refuse: NUL, which PostgreSQL's text cannot hold (validation.NUL_REFUSED).
NO_NUL_PATTERN = r"^[^\u0000]*$"
# "Not blank" as both regex dialects read it: one character that neither Python's str.strip()
# (which also strips U+001C-U+001F and U+0085) nor ECMA-262's \s counts as white space.
NOT_BLANK_PATTERN = r"^[^\u0000]*[^\s\u0000\u001c-\u001f\u0085][^\u0000]*$"
# An http(s) URL the server takes without looking up DNS: a host name whose labels start with a
# letter (a numeric host could be a refused address, see webhooks/ssrf.py), an optional port
# and a plain path. Other URLs may be accepted too; these always are.
WEBHOOK_URL_PATTERN = (
    r"^https?://[A-Za-z][A-Za-z0-9-]{0,62}(\.[A-Za-z][A-Za-z0-9-]{0,62})*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one request field must be. Unset attributes put no bound."""

    summary: str
    """The rule in words, for error messages' readers and the document's description."""
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    """In characters (code points), as JSON Schema counts them."""
    max_bytes: int | None = None
    """In UTF-8, the unit the server counts message text in; declared as max_length characters."""
    pattern: str | None = None
    """ECMA-262 regular expression that every accepted value matches (the document's `pattern`)."""
    enum: tuple[str, ...] = ()
    format: str | None = None
    min_items: int | None = None
    max_items: int | None = None


def _text(summary: str, max_bytes: int) -> Rule:
    return Rule(
        summary,
        min_length=1,
        max_length=max_bytes // UTF8_MAX_BYTES_PER_CHAR,
        max_bytes=max_bytes,
        pattern=NOT_BLANK_PATTERN,
    )


def _uuid(summary: str) -> Rule:
    return Rule(summary, format="uuid", pattern=UUID_PATTERN, min_length=36, max_length=36)


@cache
def field_rules(max_message_bytes: int, max_timeout_seconds: int) -> Mapping[str, Rule]:
    """Every rule, by field name, for a server with these settings. A name that means different
    things in different requests has one row per meaning (`task_status`, `agent_status`)."""
    seconds = f"whole seconds, 1 to {max_timeout_seconds}"
    rules = {
        "agent_id": _uuid("an agent's id: a UUID"),
        "task_agent_id": Rule(
            f"the task's agent id (a UUID), or `{ANY_AGENT}` for whichever agent the task has",
            pattern=rf"^(-|{UUID_PATTERN[1:-1]})$",
            min_length=1,
            max_length=36,
        ),
        "task_id": _uuid("a task's id: a UUID"),
        "message": _text(
            f"required, not blank, at most {max_message_bytes} bytes of UTF-8, no NUL characters",
            max_message_bytes,
        ),
        "priority": Rule(f"{MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (highest)", MIN_PRIORITY, MAX_PRIORITY),
        "timeout_override": Rule(seconds, 1, max_timeout_seconds),
        "default_timeout_seconds": Rule(seconds, 1, max_timeout_seconds),
        "input_timeout_seconds": Rule(f"whole seconds, 1 to {MAX_INPUT_TIMEOUT_SECONDS}", 1, MAX_INPUT_TIMEOUT_SECONDS),
        "max_attempts": Rule(f"1 to {MAX_ATTEMPTS}", 1, MAX_ATTEMPTS),
        "callback_mode": Rule("`poll` (the default) or `webhook`", enum=tuple(m.value for m in CallbackMode)),
        "webhook_url": Rule(
            f"an http(s) URL naming a host, without credentials, at most {MAX_URL_LENGTH} characters",
            max_length=MAX_URL_LENGTH,
            pattern=WEBHOOK_URL_PATTERN,
        ),
        "request_id": Rule(
            f"at most {MAX_REQUEST_ID_LENGTH} letters, digits and `- _ . : ~ / + =`",
            max_length=MAX_REQUEST_ID_LENGTH,
            pattern=rf"^[{_REQUEST_ID_CLASS}]*$",
        ),
        "name": Rule(
            f"not blank, at most {MAX_NAME_LENGTH} characters, no NUL characters",
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=NOT_BLANK_PATTERN,
        ),
        "description": Rule(
            f"at most {MAX_DESCRIPTION_LENGTH} characters, no NUL characters",
            max_length=MAX_DESCRIPTION_LENGTH,
            pattern=NO_NUL_PATTERN,
        ),
        "status_message": Rule(
            f"at most {MAX_DESCRIPTION_LENGTH} characters, no NUL characters",
            max_length=MAX_DESCRIPTION_LENGTH,
            pattern=NO_NUL_PATTERN,
        ),
        "task_status": Rule("one of the task statuses", enum=tuple(s.value for s in TaskStatus)),
        "agent_status": Rule("one of the agent statuses", enum=tuple(s.value for s in AgentStatus)),
        "page_size": Rule(f"0 (the default, 50) or more; at most {MAX_PAGE_SIZE} are given", 0, INT32_MAX),
        "after_sequence": Rule(
            "a sequence number: a whole number, 0 or more",
            pattern=rf"^[0-9]{{1,{MAX_SEQUENCE_DIGITS}}}$",
        ),
        "requests": Rule(f"1 to {MAX_BATCH} requests", min_items=1, max_items=MAX_BATCH),
    }
    return MappingProxyType(rules)
