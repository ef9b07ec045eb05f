"""Why a gRPC channel could not reach the server, as one line a person can act on.

gRPC reports a failed connection as UNAVAILABLE with details written for its own developers
(`failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect
to remote host: Connection refused`, or a resolver's bracketed dump). The CLI and the worker
both turn those into the same sentences here; the module takes plain strings, so it needs
neither grpc nor either of its users.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

SERVE_HINT = "is 'agenttasks serve' running?"
MAX_REASON_CHARS = 160

_RESOLVING = (
    "errors resolving",
    "dns resolution failed",
    "domain name not found",
    "name or service not known",
    "nodename nor servname",
    "hostname lookup",
    "could not resolve",
    "address lookup failed",
)
# (words in the details, the reason shown), most specific first.
_REASONS = (
    ("connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("deadline", "timed out"),
    ("no route to host", "no route to host"),
    ("host is unreachable", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("failed parsing http/2", "something answers there, but it is not a gRPC server"),
    ("http1.x server", "something answers there, but it is not a gRPC server"),
    ("no such file or directory", "no such socket"),
)
_SCHEME = re.compile(r"^(?:dns|ipv4|ipv6):(?://[^/]*/)?")
_ADDRESS = re.compile(r"\b(ipv4|ipv6|unix|unix-abstract|vsock):(\S+?):? ")
_RESOLVED = re.compile(r"(?:errors resolving|resolution failed for|lookup failed for) (\S+?):? ")
_CODE_PREFIX = re.compile(r"^[A-Z_]+: ")
_ADDRESS_PREFIX = re.compile(r"^(?:ipv4|ipv6|unix|unix-abstract|vsock):\S+?: ")
_PORT = re.compile(r"(?:^\[.*\]|^[^:]*):\d+$")


def unreachable(details: str, target: str | None = None) -> str:
    """The sentence for an UNAVAILABLE status without ErrorInfo (the channel's own failure, not
    an answer from the server): `cannot reach agenttasks at HOST:PORT (connection refused): is
    'agenttasks serve' running?`, `cannot resolve host NAME`, or a short cleaned-up reason.

    `target` is the address as the user gave it (`--server`); without it, the address is read
    from the details.
    """
    lowered = details.lower()
    if "misformatted domain name" in lowered:
        return f"not a valid server address: {target or _resolved(details) or '?'} (expected HOST:PORT)"
    if any(words in lowered for words in _RESOLVING):
        return f"cannot resolve host {_host(target) if target else _host(_resolved(details) or '?')}"
    where = _where(details, target)
    for words, reason in _REASONS:
        if words in lowered:
            hint = f": {SERVE_HINT}" if reason == "connection refused" else ""
            return f"cannot reach agenttasks at {where} ({reason}){hint}"
    reason = _cleaned(details)
    return f"cannot reach agenttasks at {where}" + (f" ({reason})" if reason else "")


def _where(details: str, target: str | None) -> str:
    """The address to name: the user's, with the port gRPC chose when the user gave none
    (`localhost` means port 443 to gRPC, which surprises)."""
    tried = _tried(details)
    if not target:
        return tried or "the server"
    plain = _SCHEME.sub("", target)
    if tried and _PORT.match(tried) and not _PORT.match(plain) and not plain.startswith("unix"):
        return f"{plain}:{tried.rpartition(':')[2]}"
    return plain


def _tried(details: str) -> str | None:
    match = _ADDRESS.search(details)
    if match is None:
        return None
    kind, address = match.groups()
    return unquote(address) if kind in ("ipv4", "ipv6") else f"{kind}:{address}"


def _resolved(details: str) -> str | None:
    match = _RESOLVED.search(details)
    return match.group(1) if match else None


def _host(target: str) -> str:
    """`nosuchhost.invalid` from `dns:///nosuchhost.invalid:50051`; `::1` from `[::1]:1`."""
    plain = _SCHEME.sub("", target)
    if plain.startswith("["):
        return plain[1:].partition("]")[0]
    host, colon, port = plain.rpartition(":")
    return host if colon and port.isdigit() and host else plain


def _cleaned(details: str) -> str:
    """gRPC's last error without its status code, address and bracketed dumps, cut short."""
    text = details.rpartition("last error: ")[2]
    text = _CODE_PREFIX.sub("", text.strip())
    text = _ADDRESS_PREFIX.sub("", text)
    text = text.removeprefix("Failed to connect to remote host: ")
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = " ".join(text.split()).strip(" :;,")
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3].rstrip() + "..."
    if text[:1].isupper() and not text[1:2].isupper():  # "No such file", but keep "FD shutdown"
        text = text[0].lower() + text[1:]
    return text
