"""The SSRF address policy: every refused form, numeric host tricks, the allow list and DNS."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from agenttasks.webhooks.ssrf import (
    Resolver,
    TargetRefused,
    check_url_literal,
    literal_address,
    parse_allow,
    refusal,
    resolve_checked,
)

# Teredo: server 65.54.227.120, client 192.168.1.1 stored inverted (3f57:fefe).
TEREDO_PRIVATE_CLIENT = "2001:0:4136:e378:8000:63bf:3f57:fefe"

REFUSED_ADDRESSES = {
    "127.0.0.1": "loopback",
    "10.0.0.1": "private address (RFC 1918)",
    "172.16.0.1": "private address (RFC 1918)",
    "192.168.1.1": "private address (RFC 1918)",
    "100.64.0.1": "CGNAT",
    "169.254.169.254": "cloud metadata",
    "169.254.1.1": "link-local",
    "0.0.0.0": "unspecified",  # noqa: S104 - a target to refuse, not a bind address
    "0.1.2.3": "this network",
    "255.255.255.255": "broadcast",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "192.0.2.1": "special-purpose",
    "::1": "loopback",
    "::": "unspecified",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fd00:ec2::254": "cloud metadata",
    "fe80::1": "link-local",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "fec0::1": "site-local",
    "2001:db8::1": "special-purpose",
    "::ffff:127.0.0.1": "IPv4-mapped IPv6 address embedding 127.0.0.1: loopback",
    "::ffff:169.254.169.254": "embedding 169.254.169.254: cloud metadata",
    "::127.0.0.1": "IPv4-compatible IPv6 address embedding 127.0.0.1: loopback",
    "64:ff9b::7f00:1": "NAT64 address (64:ff9b::/96) embedding 127.0.0.1: loopback",
    "64:ff9b:1::a00:1": "local-use NAT64",
    "2002:7f00:1::1": "6to4 address (2002::/16) embedding 127.0.0.1: loopback",
    TEREDO_PRIVATE_CLIENT: "Teredo address (2001::/32) for client 192.168.1.1: private",
}

PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::1", "2001:4860:4860::8888"]

# Numeric host forms that some parser or other reads as 127.0.0.1 (or as something else).
AMBIGUOUS_HOSTS = [
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.1",
    "127.0.1",
    "0x7f000001",
    "0x7F.1",
    "017700000001",
    "127.0.0.01",
    "127.0.0.1.",
    "0x7f.0.0.0x1",
    "1.2.3.4.5",
    "0x",
]


@pytest.mark.parametrize(("address", "why"), REFUSED_ADDRESSES.items())
def test_refused_addresses(address: str, why: str) -> None:
    reason = refusal(address, [])
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address, []) is None
    assert check_url_literal(f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook", []) is None


@pytest.mark.parametrize(
    "embedded",
    ["::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1", "::93.184.216.34"],
)
def test_ipv6_forms_embedding_ipv4_are_refused_even_when_the_ipv4_is_public(embedded: str) -> None:
    reason = refusal(embedded, [])
    assert reason is not None
    assert reason.endswith("embedding 93.184.216.34")  # and no class named for a public address


def test_zone_ids_are_refused() -> None:
    assert refusal("fe80::1%eth0", parse_allow("fe80::/10")) == "IPv6 address with a zone id"
    assert check_url_literal("http://[fe80::1%25eth0]/", []) is not None


@pytest.mark.parametrize(
    "url",
    [
        *(f"http://{address}:8080/x" for address in REFUSED_ADDRESSES if ":" not in address),
        *(f"http://[{address}]:8080/x" for address in REFUSED_ADDRESSES if ":" in address),
        *(f"https://{host}/x" for host in AMBIGUOUS_HOSTS),
        "http://[::ffff:7f00:1]/",
        "http://[::FFFF:127.0.0.1]/",
        "http://[0:0:0:0:0:ffff:7f00:1]/",
        "http://[::1]:80/",
        "http://user@127.0.0.1/",
        "http://127.0.0.1:99999/",
        "http:///nohost",
    ],
)
def test_check_url_literal_refuses(url: str) -> None:
    reason = check_url_literal(url, [])
    assert reason is not None
    assert reason.startswith("must ")


@pytest.mark.parametrize("host", AMBIGUOUS_HOSTS)
def test_ambiguous_numeric_hosts_are_refused_as_such(host: str) -> None:
    with pytest.raises(TargetRefused, match="not a canonical dotted-quad"):
        literal_address(host)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "http://localhost:8080/",  # a name: refused after resolving, not here
        "https://1e100.net/",
        "https://0x7f.example.com/",
        "https://127.0.0.1.nip.io/",
        "https://93.184.216.34/",
        "https://[2606:2800:220:1::1]:8443/",
    ],
)
def test_check_url_literal_leaves_names_and_public_literals(url: str) -> None:
    assert check_url_literal(url, []) is None


def test_allow_list_lets_only_listed_networks_through() -> None:
    allow = parse_allow("127.0.0.0/8")
    assert refusal("127.0.0.1", allow) is None
    assert refusal("::ffff:127.0.0.1", allow) is None  # the same destination
    assert refusal("10.0.0.1", allow) is not None
    assert refusal("::1", allow) is not None
    assert check_url_literal("http://127.0.0.1:8080/", allow) is None
    assert check_url_literal("http://10.0.0.1:8080/", allow) is not None
    assert check_url_literal("http://127.1:8080/", allow) is not None  # ambiguous even when allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, []),
        ("", []),
        ("127.0.0.0/8", ["127.0.0.0/8"]),
        ("127.0.0.0/8, ::1/128 10.1.2.3", ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]),
        ("192.168.1.7/24", ["192.168.1.0/24"]),
        (["127.0.0.0/8", ip_network("::1")], ["127.0.0.0/8", "::1/128"]),
    ],
)
def test_parse_allow(text: str | list[Any] | None, expected: list[str]) -> None:
    assert [str(n) for n in parse_allow(text)] == expected


@pytest.mark.parametrize("bad", ["127.0.0.0/33", "localhost", "127.1/8", "fe80::/10%eth0", "10.0.0.0/8,nope"])
def test_parse_allow_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="not a network in CIDR form") as info:
        parse_allow(bad)
    assert repr(bad.split(",")[-1]) in str(info.value)


def fixed(*answers: str) -> tuple[list[tuple[str, int]], Resolver]:
    calls: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        calls.append((host, port))
        return answers

    return calls, resolver


@pytest.mark.asyncio
async def test_resolve_checked_returns_a_checked_address() -> None:
    calls, resolver = fixed("93.184.216.34", "2606:2800:220:1::1")
    assert await resolve_checked("hooks.example.test", 443, [], resolver) == "93.184.216.34"
    assert calls == [("hooks.example.test", 443)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answers",
    [("93.184.216.34", "10.0.0.1"), ("10.0.0.1", "93.184.216.34"), ("2606:2800:220:1::1", "::ffff:127.0.0.1")],
)
async def test_resolve_checked_refuses_if_any_answer_is_refused(answers: tuple[str, ...]) -> None:
    _, resolver = fixed(*answers)
    with pytest.raises(TargetRefused, match=r"hooks\.example\.test resolves to"):
        await resolve_checked("hooks.example.test", 443, [], resolver)


@pytest.mark.asyncio
async def test_resolve_checked_refuses_empty_and_garbage_answers() -> None:
    _, empty = fixed()
    with pytest.raises(TargetRefused, match="did not resolve"):
        await resolve_checked("hooks.example.test", 443, [], empty)
    _, garbage = fixed("not-an-ip")
    with pytest.raises(TargetRefused, match="not an IP address"):
        await resolve_checked("hooks.example.test", 443, [], garbage)


@pytest.mark.asyncio
async def test_resolve_checked_turns_dns_errors_into_refusals() -> None:
    async def failing(host: str, port: int) -> Sequence[str]:
        raise OSError("Name or service not known")

    with pytest.raises(TargetRefused, match="cannot resolve"):
        await resolve_checked("hooks.example.test", 443, [], failing)


@pytest.mark.asyncio
async def test_resolve_checked_takes_literals_without_dns() -> None:
    calls, resolver = fixed("93.184.216.34")
    allow = parse_allow("127.0.0.0/8")
    assert await resolve_checked("127.0.0.1", 80, allow, resolver) == "127.0.0.1"
    mapped = await resolve_checked("[::ffff:7f00:1]", 80, allow, resolver)
    assert ip_address(mapped) == ip_address("::ffff:127.0.0.1")
    for host in ("10.0.0.1", "2130706433", "[::1]"):
        with pytest.raises(TargetRefused):
            await resolve_checked(host, 80, allow, resolver)
    assert calls == []


@pytest.mark.asyncio
async def test_resolve_checked_uses_the_system_resolver_by_default() -> None:
    with pytest.raises(TargetRefused, match=r"localhost resolves to .*loopback"):
        await resolve_checked("localhost", 80, [])
    # Allowing both loopback networks lets whatever localhost resolves to through.
    assert await resolve_checked("localhost", 80, parse_allow("127.0.0.0/8 ::1/128")) in ("127.0.0.1", "::1")
