"""Which addresses a webhook may be delivered to, so a tenant cannot aim our server at itself.

Webhook URLs come from clients, and the server POSTs to them from inside the operator's network.
Without a check a URL could reach loopback services, the private network or the cloud metadata
endpoint (server-side request forgery). The policy is an address policy: before each attempt the
host is resolved, every address is checked, and the connection goes to the checked address, so a
DNS answer that changes between check and connect (DNS rebinding) cannot slip through.

Operators allow networks explicitly (`parse_allow`), e.g. 127.0.0.0/8 for tests and local
development; an allowed address passes even if it would otherwise be refused.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves (host, port) to IP address strings; the default uses the event loop's getaddrinfo."""


class TargetRefused(Exception):
    """The webhook target may not be contacted; `reason` says why, for the delivery log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Named separately from the ranges that already refuse them, so the delivery log says what was hit.
_METADATA: dict[Address, str] = {
    IPv4Address("169.254.169.254"): "cloud metadata address",
    IPv4Address("169.254.170.2"): "cloud metadata address (AWS ECS)",
    IPv4Address("100.100.100.200"): "cloud metadata address (Alibaba Cloud)",
    IPv6Address("fd00:ec2::254"): "cloud metadata address (AWS IPv6)",
}

_THIS_NETWORK = IPv4Network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the local host
_RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
_CGNAT = IPv4Network("100.64.0.0/10")
_BROADCAST = IPv4Address("255.255.255.255")

# IPv6 forms that carry an IPv4 address: a host reached through one of them is really the IPv4
# host, so a bare IPv6 check would miss e.g. ::ffff:127.0.0.1. None is a normal way to name a
# webhook receiver, so all are refused; the embedded address is named in the reason.
_V4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")  # RFC 8215; the IPv4 position depends on the prefix used
_SIX_TO_FOUR = IPv6Network("2002::/16")
_TEREDO = IPv6Network("2001::/32")
_ULA = IPv6Network("fc00::/7")

_HEX_LABEL = re.compile(r"0x[0-9a-f]*")


def parse_allow(value: str | Iterable[str | Network] | None) -> list[Network]:
    """The operator's allowed networks, from a comma- or space-separated string or a list.

    Raises ValueError naming the first entry that is not a network in CIDR form (a bare address
    means just that address). Host bits are ignored: 127.0.0.1/8 allows 127.0.0.0/8.
    """
    if value is None:
        return []
    items: Iterable[str | Network] = re.split(r"[\s,]+", value) if isinstance(value, str) else value
    networks: list[Network] = []
    for item in items:
        if isinstance(item, IPv4Network | IPv6Network):
            networks.append(item)
            continue
        text = item.strip()
        if not text:
            continue
        if "%" in text:
            raise ValueError(f"not a network in CIDR form (zone ids are not allowed): {text!r}")
        try:
            networks.append(ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"not a network in CIDR form: {text!r}") from None
    return networks


def _allowed(address: Address, allow: Sequence[Network]) -> bool:
    # An IPv4-mapped address is the same destination as its IPv4 address.
    candidates: list[Address] = [address]
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in allow)


def _v4_refusal(address: IPv4Address) -> str | None:
    if address in _METADATA:
        return _METADATA[address]
    if address.is_unspecified:
        return "unspecified address"
    if address in _THIS_NETWORK:
        return "'this network' address (0.0.0.0/8)"
    if address.is_loopback:
        return "loopback address"
    if any(address in network for network in _RFC1918):
        return "private address (RFC 1918)"
    if address in _CGNAT:
        return "shared address space (CGNAT, 100.64.0.0/10)"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address == _BROADCAST:
        return "broadcast address"
    if address.is_reserved:
        return "reserved address"
    if not address.is_global:
        return "special-purpose address (not globally reachable)"
    return None


def _embedded(form: str, v4: IPv4Address, relation: str = "embedding") -> str:
    inner = _v4_refusal(v4)
    return f"{form} {relation} {v4}" + (f": {inner}" if inner else "")


def _v6_refusal(address: IPv6Address) -> str | None:
    if address in _METADATA:
        return _METADATA[address]
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.ipv4_mapped is not None:
        return _embedded("IPv4-mapped IPv6 address", address.ipv4_mapped)
    if address in _V4_COMPATIBLE:
        return _embedded("IPv4-compatible IPv6 address", IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _NAT64:
        return _embedded("NAT64 address (64:ff9b::/96)", IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _NAT64_LOCAL:
        return "local-use NAT64 address (64:ff9b:1::/48)"
    if address.sixtofour is not None:
        return _embedded("6to4 address (2002::/16)", address.sixtofour)
    if address.teredo is not None:
        return _embedded("Teredo address (2001::/32)", address.teredo[1], "for client")
    if address.is_multicast:
        return "multicast address"
    if address.is_link_local:
        return "link-local address"
    if address.is_site_local:
        return "site-local address (deprecated, fec0::/10)"
    if address in _ULA:
        return "unique local address (private, fc00::/7)"
    if address.is_reserved:
        return "reserved address"
    if not address.is_global:
        return "special-purpose address (not globally reachable)"
    return None


def refusal(ip: Address | str, allow: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not be delivered to this address, or None when it may.

    An address inside an allowed network passes. An IPv6 zone id is always refused: it only
    makes sense for link-local addresses, and the connection could not carry it anyway.
    """
    address = ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, IPv6Address) and address.scope_id:
        return "IPv6 address with a zone id"
    if _allowed(address, allow):
        return None
    if isinstance(address, IPv4Address):
        return _v4_refusal(address)
    return _v6_refusal(address)


def _is_numeric_label(label: str) -> bool:
    # The WHATWG URL rule for "ends in a number": such hosts are IPv4 to browsers and to
    # inet_aton (decimal, 0-prefixed octal, 0x-prefixed hex, fewer than four parts).
    return bool(label) and label.isascii() and (label.isdigit() or _HEX_LABEL.fullmatch(label) is not None)


def literal_address(host: str) -> Address | None:
    """The address a URL host names literally, or None when it is a DNS name.

    Raises TargetRefused for numeric hosts that are not a canonical dotted quad (2130706433,
    0177.0.0.1, 0x7f.0.0.1, 127.1, a trailing dot): parsers disagree on what they mean, so
    rather than guess which address the connection would reach we refuse them as ambiguous.
    Zone ids and malformed IPv6 literals are refused too.
    """
    text = host
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed:
        text = text[1:-1]
    if not text:
        raise TargetRefused("empty host")
    if "%" in text:
        raise TargetRefused(f"host {host!r} has a zone id or percent-encoding")
    if ":" in text:
        try:
            return IPv6Address(text)
        except ValueError:
            raise TargetRefused(f"host {host!r} is not a valid IPv6 address") from None
    if bracketed:
        raise TargetRefused(f"host {host!r}: only IPv6 addresses may be bracketed")
    labels = text.lower().split(".")
    last = labels[-1] or (labels[-2] if len(labels) > 1 else "")
    if not _is_numeric_label(last):
        return None
    try:
        address = IPv4Address(text)
    except ValueError:
        address = None
    if address is None or str(address) != text:
        raise TargetRefused(f"numeric host {host!r} is not a canonical dotted-quad IPv4 address (ambiguous)")
    return address


def check_url_literal(url: str, allow: Sequence[Network] = ()) -> str | None:
    """Why a webhook URL is refused outright, or None when it is acceptable or needs DNS to tell.

    Synchronous and without DNS, for Submit: a URL naming a refused address, or an ambiguous
    numeric host, fails at once. Names are checked again, resolved, before every attempt.
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "must be a valid URL"
    if not host:
        return "must name a host"
    try:
        address = literal_address(host)
    except TargetRefused as refused:
        return f"must name an acceptable host: {refused.reason}"
    if address is None:
        return None
    why = refusal(address, allow)
    return None if why is None else f"must not target {address}: {why}"


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


async def resolve_checked(host: str, port: int, allow: Sequence[Network] = (), resolver: Resolver | None = None) -> str:
    """The one checked IP address to connect to for host; TargetRefused when there is none.

    Every address the name resolves to must pass: an answer that mixes public and private
    addresses is a rebinding signal, not a choice. The first address is returned (getaddrinfo
    orders them by preference). Connect to exactly this address; never resolve host again.
    """
    literal = literal_address(host)
    if literal is not None:
        if (why := refusal(literal, allow)) is not None:
            raise TargetRefused(f"{literal}: {why}")
        return str(literal)
    try:
        answers = await (resolver or _system_resolver)(host, port)
    except OSError as error:  # socket.gaierror and friends
        raise TargetRefused(f"cannot resolve {host}: {error}") from None
    addresses: list[Address] = []
    for answer in answers:
        try:
            address = ip_address(answer)
        except ValueError:
            raise TargetRefused(f"{host} resolved to {answer!r}, which is not an IP address") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise TargetRefused(f"{host} did not resolve to any address")
    for address in addresses:
        if (why := refusal(address, allow)) is not None:
            raise TargetRefused(f"{host} resolves to {address}: {why}")
    return str(addresses[0])
