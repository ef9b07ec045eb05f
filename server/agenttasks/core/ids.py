"""Identifiers: time-ordered UUIDv7 for everything a client sees.

v7 ids sort by creation time, so they index well and read naturally in logs; the random part
(74 bits) keeps them unguessable enough that an id is no secret but also no enumeration aid.
"""

from __future__ import annotations

import uuid

import uuid_utils

from agenttasks.core.errors import InvalidArgument, Why


def new_id() -> str:
    """A new UUIDv7 in canonical lower-case text form."""
    return str(uuid_utils.uuid7())


def check_id(value: str, field: str) -> str:
    """Return the canonical form of a client-given UUID, or fail naming the field.

    Malformed ids are bad input (400), not unknown ones (404): the client can fix them.
    """
    if not value:
        raise InvalidArgument.field(field, "required", Why.REQUIRED)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument.field(field, f"must be a UUID, got {value[:64]!r}", Why.NOT_A_UUID) from None


def agent_scope(agent_id: str) -> str:
    """The canonical spelling of the agent a credential is scoped to ("" for none), as check_id
    gives it to the hello it is compared with; ValueError if it is not an id."""
    if not agent_id:
        return ""
    try:
        return check_id(agent_id, "agent_id")
    except InvalidArgument:
        raise ValueError(f"agent_id must be an agent id (a UUID), got {agent_id[:64]!r}") from None
