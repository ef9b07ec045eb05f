"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A delivery is signed as `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with a per-tenant
`whsec_<base64 key>` secret, so receivers can use any Standard Webhooks library to check it.
The `webhook-id` stays the same on every retry of a delivery (receivers de-duplicate on it); the
`webhook-timestamp` is fresh per attempt (receivers reject stale ones against replay). While a
tenant rotates its secret, each message carries one signature per live secret, space-separated,
so receivers can switch over at their own pace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

from agenttasks import __version__

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SIGNATURE_VERSION = "v1"
USER_AGENT = f"agenttasks-webhooks/{__version__}"
DEFAULT_TOLERANCE_SECONDS = 5 * 60  # the spec's suggested replay window

# The spec recommends keys of 24 to 64 bytes; shorter keys are too weak, longer ones pointless.
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64
_NEW_KEY_BYTES = 32


class SignatureError(ValueError):
    """A webhook failed verification; the message says which check failed."""


def new_secret() -> str:
    """A fresh random signing secret in the `whsec_` form receivers paste into their libraries."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(_NEW_KEY_BYTES)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret; ValueError when it is not one.

    Missing base64 padding is tolerated (some tools strip it); anything else that is not strict
    base64 is refused rather than silently decoded into a different key.
    """
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ValueError(f"a webhook secret's key must be {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def _check_msg_id(msg_id: str) -> None:
    # The signed content is "id.timestamp.body": an id with a dot could shift bytes between the id
    # and the body and still match; whitespace or control characters cannot go in a header.
    if not msg_id or "." in msg_id or not msg_id.isascii() or not msg_id.isprintable() or " " in msg_id:
        raise ValueError("a webhook id must be non-empty printable ASCII without spaces or dots")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one attempt; timestamp is unix seconds."""
    _check_msg_id(msg_id)
    if timestamp < 0:
        raise ValueError("a webhook timestamp must not be negative")
    digest = _digest(parse_secret(secret), msg_id, int(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, current secret first.

    Pass the previous secret as well during a rotation's overlap window, so receivers still on
    the old secret keep verifying.
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    unique = list(dict.fromkeys(secrets))
    if not unique:
        raise ValueError("at least one webhook secret is needed to sign")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in unique)


def headers(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """All headers of one delivery attempt (the body is JSON)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a received webhook as a receiver would; raise SignatureError when it fails.

    Header names are matched case-insensitively. The timestamp must be within `tolerance`
    seconds of `now` (default: the clock), so a captured request cannot be replayed later. Any
    one of the space-separated `v1` signatures may match; comparison is constant-time.
    """
    key = parse_secret(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (msg_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not (stamp.isascii() and stamp.isdigit()):
        raise SignatureError("webhook-timestamp is not unix seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("webhook-timestamp is outside the tolerance window")
    expected = _digest(key, msg_id, timestamp, body)
    for candidate in signatures.split(" "):
        version, _, encoded = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return
    raise SignatureError("no matching signature")
