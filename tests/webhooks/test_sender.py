"""One delivery attempt against real HTTP receivers on 127.0.0.1 that count their connections."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks import Webhook

from agenttasks.webhooks import signing
from agenttasks.webhooks.sender import AttemptResult, deliver, make_client, parse_retry_after
from agenttasks.webhooks.ssrf import Network, Resolver, parse_allow

BODY = b'{"type":"task.completed","data":{"task_id":"t1"}}'
LOOPBACK = parse_allow("127.0.0.0/8")
HOOK_HOST = "hooks.example.test"


@dataclass
class Seen:
    """One request a receiver read."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server on 127.0.0.1; `handler` writes the answer (or doesn't)."""

    handler: Callable[[Receiver, asyncio.StreamWriter], Awaitable[None]]
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.release.set()  # black holes and endless bodies stop now
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ")
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Seen(method, target, headers, body))
            await self.handler(self, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._handlers.discard(task)


def answer(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Callable[..., Awaitable[None]]:
    async def handler(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
        lines = [f"HTTP/1.1 {status} Whatever", f"content-length: {len(body)}", "connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return handler


async def black_hole(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
    await receiver.release.wait()


async def ten_megabytes(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
    size = 10 * 1024 * 1024
    writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()


async def endless(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    while not receiver.release.is_set():
        writer.write(chunk)
        await writer.drain()


@pytest_asyncio.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start(handler: Callable[..., Awaitable[None]], tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(handler, tls)
        await receiver.start()
        started.append(receiver)
        return receiver

    try:
        yield start
    finally:
        for receiver in started:
            await receiver.close()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def signed(secret: str, msg_id: str = "0190f5b2-7c1e-7abc-8def-0123456789ab") -> dict[str, str]:
    return signing.headers(msg_id, int(time.time()), BODY, [secret])


def resolve_to(address: str) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolver(host: str, port: int) -> list[str]:
        return [address]

    return resolver


async def send(
    client: httpx.AsyncClient,
    url: str,
    allow: list[Network] = LOOPBACK,
    *,
    timeout: float = 15.0,  # noqa: ASYNC109 - passed through to deliver
    max_response_bytes: int = 64 * 1024,
    resolver: Resolver | None = None,
) -> AttemptResult:
    headers = signed(signing.new_secret())
    return await deliver(
        client,
        url,
        headers,
        BODY,
        allow=allow,
        timeout=timeout,
        max_response_bytes=max_response_bytes,
        resolver=resolver,
    )


@pytest.mark.asyncio
async def test_2xx_delivers_the_signed_request(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(204))
    secret = signing.new_secret()
    headers = signed(secret)
    result = await deliver(client, f"{hook.url}/hooks/in?x=1", headers, BODY, allow=LOOPBACK)
    assert result.status_code == 204
    assert result.ok
    assert result.error == ""
    assert result.retry_after is None
    assert result.elapsed >= 0
    assert hook.connections == 1
    [seen] = hook.requests
    assert (seen.method, seen.target, seen.body) == ("POST", "/hooks/in?x=1", BODY)
    assert seen.headers["host"] == f"127.0.0.1:{hook.port}"
    for name, value in headers.items():
        assert seen.headers[name] == value
    Webhook(secret).verify(seen.body, seen.headers)
    signing.verify(secret, seen.headers, seen.body)


@pytest.mark.asyncio
async def test_500_is_a_result_and_its_retry_after_is_ignored(
    client: httpx.AsyncClient, receivers: Callable[..., Any]
) -> None:
    hook = await receivers(answer(500, {"retry-after": "5"}, b"oops"))
    result = await send(client, hook.url)
    assert (result.status_code, result.error, result.retry_after, result.ok) == (500, "", None, False)


def http_date(offset: float) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset), usegmt=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_delta_seconds(status: int, client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(status, {"Retry-After": "120"}))
    result = await send(client, hook.url)
    assert (result.status_code, result.retry_after) == (status, 120.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_http_date(status: int, client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(status, {"Retry-After": http_date(3600)}))
    result = await send(client, hook.url)
    assert result.status_code == status
    assert result.retry_after is not None
    assert 3000 < result.retry_after <= 3600


def test_parse_retry_after_forms() -> None:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 30 ") == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 00:01:00 GMT", now) == 60.0
    assert parse_retry_after("Sun, 31 Dec 2023 23:00:00 GMT", now) == 0.0  # past: now
    for unusable in (None, "", "-5", "1.5", "soon", "9" * 5000):
        assert parse_retry_after(unusable) is None


@pytest.mark.asyncio
async def test_redirects_are_not_followed(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    elsewhere = await receivers(answer(200))
    hook = await receivers(answer(302, {"location": f"{elsewhere.url}/stolen"}))
    result = await send(client, hook.url)
    assert result.status_code == 302
    assert not result.ok
    assert hook.connections == 1
    assert elsewhere.connections == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("handler", [ten_megabytes, endless], ids=["10MB", "endless"])
async def test_large_answers_are_cut_off(
    handler: Callable[..., Awaitable[None]], client: httpx.AsyncClient, receivers: Callable[..., Any]
) -> None:
    hook = await receivers(handler)
    # A generous timeout: the attempt must end by stopping to read, not by timing out.
    result = await send(client, hook.url, timeout=30.0, max_response_bytes=64 * 1024)
    assert (result.status_code, result.error) == (200, "")


async def stalled_body(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
    await writer.drain()
    await receiver.release.wait()


async def truncated_body(receiver: Receiver, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
    await writer.drain()


@pytest.mark.asyncio
@pytest.mark.parametrize("handler", [stalled_body, truncated_body], ids=["stalled", "truncated"])
async def test_trouble_after_the_status_line_keeps_the_status(
    handler: Callable[..., Awaitable[None]], client: httpx.AsyncClient, receivers: Callable[..., Any]
) -> None:
    # The receiver has answered 200; a retry would deliver the webhook twice.
    hook = await receivers(handler)
    result = await send(client, hook.url, timeout=0.5)
    assert (result.status_code, result.error) == (200, "")


@pytest.mark.asyncio
async def test_a_black_hole_times_out(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(black_hole)
    result = await send(client, hook.url, timeout=0.5)
    assert result.status_code is None
    assert result.error.startswith("timeout")
    assert hook.connections == 1


@pytest.mark.asyncio
async def test_ssrf_forms_never_reach_the_listener(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(200))
    port = hook.port
    urls = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://0x7f.0.0.1:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://127.1:{port}/",
        f"http://127.0.0.1.:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://[::ffff:7f00:1]:{port}/",
        f"http://[::127.0.0.1]:{port}/",
        f"http://[::1]:{port}/",
        f"http://[64:ff9b::7f00:1]:{port}/",
    ]
    for url in urls:
        result = await send(client, url, allow=[])
        assert result.status_code is None, url
        assert result.error.startswith("refused: ") or result.error.startswith("invalid URL: "), url
    # A name that resolves to loopback is refused too, however it is resolved.
    result = await send(client, f"http://{HOOK_HOST}:{port}/", allow=[], resolver=resolve_to("127.0.0.1"))
    assert result.error.startswith("refused: ")
    assert hook.connections == 0


@pytest.mark.asyncio
async def test_the_connection_goes_to_the_checked_address(
    client: httpx.AsyncClient, receivers: Callable[..., Any]
) -> None:
    hook = await receivers(answer(200))
    result = await send(client, f"http://{HOOK_HOST}:{hook.port}/in", resolver=resolve_to("127.0.0.1"))
    assert (result.status_code, result.error) == (200, "")
    [seen] = hook.requests
    assert seen.headers["host"] == f"{HOOK_HOST}:{hook.port}"
    assert seen.target == "/in"


@pytest.mark.asyncio
async def test_a_closed_port_is_a_result(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(200))
    port = hook.port
    await hook.close()
    result = await send(client, f"http://127.0.0.1:{port}/")
    assert result.status_code is None
    assert result.error.startswith("ConnectError")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "http://user:pw@127.0.0.1/", "http://[::1/", "not a url", "http://0177.0.0.1/"]
)
async def test_bad_urls_are_a_result(url: str, client: httpx.AsyncClient) -> None:
    result = await send(client, url)
    assert result.status_code is None
    assert result.error


@pytest.mark.asyncio
async def test_dns_failure_is_a_result(client: httpx.AsyncClient) -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    result = await send(client, f"http://{HOOK_HOST}/", resolver=failing)
    assert result.status_code is None
    assert "cannot resolve" in result.error


@pytest.mark.asyncio
async def test_environment_proxies_are_ignored(
    client: httpx.AsyncClient, receivers: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await receivers(answer(200))
    hook = await receivers(answer(200))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with make_client() as fresh:
        result = await send(fresh, hook.url)
    assert result.status_code == 200
    assert (hook.connections, proxy.connections) == (1, 0)


@pytest.mark.asyncio
async def test_no_cookies_and_no_reused_connections(client: httpx.AsyncClient, receivers: Callable[..., Any]) -> None:
    hook = await receivers(answer(200, {"set-cookie": "session=secret; Path=/"}))
    for _ in range(2):
        assert (await send(client, hook.url)).status_code == 200
    assert hook.connections == 2
    assert all("cookie" not in seen.headers for seen in hook.requests)


# --- https: the certificate is checked against the original hostname, sent in SNI ---


def tls_contexts(hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for hostname, client context trusting its CA)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenttasks test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return server_context(leaf, key), ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
    )


def server_context(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context.load_cert_chain(cert_file, key_file)
    return context


@pytest.mark.asyncio
async def test_https_uses_the_hostname_for_sni_and_the_certificate(receivers: Callable[..., Any]) -> None:
    server_tls, client_tls = tls_contexts(HOOK_HOST)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)
    hook = await receivers(answer(200), tls=server_tls)
    async with make_client(verify=client_tls) as tls_client:
        # The certificate names only the hostname, not 127.0.0.1: this passes only if the
        # hostname, not the address connected to, is used for SNI and the certificate check.
        result = await send(tls_client, f"https://{HOOK_HOST}:{hook.port}/in", resolver=resolve_to("127.0.0.1"))
    assert (result.status_code, result.error) == (200, "")
    assert names == [HOOK_HOST]
    assert hook.requests[0].headers["host"] == f"{HOOK_HOST}:{hook.port}"


@pytest.mark.asyncio
async def test_https_refuses_a_certificate_for_another_name(receivers: Callable[..., Any]) -> None:
    server_tls, client_tls = tls_contexts("someone-else.example.test")
    hook = await receivers(answer(200), tls=server_tls)
    async with make_client(verify=client_tls) as tls_client:
        result = await send(tls_client, f"https://{HOOK_HOST}:{hook.port}/", resolver=resolve_to("127.0.0.1"))
    assert result.status_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in result.error or "certificate" in result.error.lower()
    assert hook.requests == []
