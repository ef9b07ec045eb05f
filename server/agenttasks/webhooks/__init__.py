"""Webhook delivery: Standard Webhooks signing, the SSRF address policy, one HTTP attempt."""

from agenttasks.webhooks.sender import AttemptResult, deliver, make_client
from agenttasks.webhooks.signing import (
    SignatureError,
    headers,
    new_secret,
    parse_secret,
    sign,
    signature_header,
    verify,
)
from agenttasks.webhooks.ssrf import TargetRefused, check_url_literal, parse_allow, refusal, resolve_checked

__all__ = [
    "AttemptResult",
    "SignatureError",
    "TargetRefused",
    "check_url_literal",
    "deliver",
    "headers",
    "make_client",
    "new_secret",
    "parse_allow",
    "parse_secret",
    "refusal",
    "resolve_checked",
    "sign",
    "signature_header",
    "verify",
]
