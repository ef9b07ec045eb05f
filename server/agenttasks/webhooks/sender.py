"""One webhook delivery attempt over HTTP: checked address, no redirects, bounded in time and size.

The delivery loop decides when to try again; this module only makes one attempt and reports what
happened. Network trouble is a result, not an exception, so the loop has a single path to log it.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from agenttasks.webhooks.ssrf import Network, Resolver, TargetRefused, literal_address, resolve_checked

DEFAULT_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RETRY_AFTER_STATUSES = (429, 503)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt got: a status code, or (status_code None) an error for the delivery log.

    `retry_after` is the receiver's Retry-After in seconds (0 for a date in the past), read only
    from 429 and 503 answers, where it means "come back later".
    """

    status_code: int | None
    error: str = ""
    retry_after: float | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """The receiver accepted the webhook (any 2xx)."""
        return self.status_code is not None and 200 <= self.status_code < 300


def make_client(*, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """An HTTP client fit for delivering webhooks to untrusted URLs.

    No proxies or certificates from the environment (trust_env=False), no redirects, no cookies
    (one receiver must not see another's), and no kept-alive connections: requests go to an IP
    with the hostname in SNI, and a pooled connection to the same IP must not carry a request for
    a different hostname than its certificate was checked for. `verify` is an SSL context for
    private CAs (and tests); the default checks against the public CAs.
    """
    return httpx.AsyncClient(
        verify=verify,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_SECONDS),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # Anything beyond ~30 years is nonsense; the length bound also keeps int() cheap.
        return float(int(text)) if len(text) <= 10 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _failure(kind: str, detail: object, started: float) -> AttemptResult:
    text = str(detail) or type(detail).__name__
    return AttemptResult(status_code=None, error=f"{kind}: {text}", elapsed=time.monotonic() - started)


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    allow: Sequence[Network],
    timeout: float = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - per-attempt budget, enforced with asyncio.timeout
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    resolver: Resolver | None = None,
) -> AttemptResult:
    """POST body to url once and report the outcome; never raises for network trouble.

    The host is resolved and checked (`resolve_checked`) and the request goes to that address,
    with the original Host header and, for https, the original hostname for SNI and the
    certificate check. A 3xx is reported, not followed. `timeout` bounds the whole attempt (DNS,
    connect, send and read); at most `max_response_bytes` of the answer are read. Use a client
    from `make_client`.
    """
    started = time.monotonic()
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as error:
        return _failure("invalid URL", error, started)
    if target.scheme not in _DEFAULT_PORTS:
        return _failure("invalid URL", "only http and https URLs are delivered", started)
    if target.userinfo:
        return _failure("invalid URL", "URLs with credentials are not delivered", started)
    # raw_host is what httpx would connect to (IDNA-encoded, unbracketed), so it is what we check.
    host = target.raw_host.decode("ascii")
    port = target.port or _DEFAULT_PORTS[target.scheme]
    response: httpx.Response | None = None
    try:
        async with asyncio.timeout(timeout):
            address = await resolve_checked(host, port, allow, resolver)
            send_headers = httpx.Headers(headers)
            send_headers["host"] = target.netloc.decode("ascii")
            extensions = {}
            if target.scheme == "https" and literal_address(host) is None:
                extensions["sni_hostname"] = host
            request = client.build_request(
                "POST",
                target.copy_with(host=address),
                headers=send_headers,
                content=body,
                extensions=extensions,
                timeout=httpx.Timeout(timeout),
            )
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                # Raw bytes: the cap counts what crosses the wire, so a compressed bomb cannot
                # expand behind it. The body itself is not needed.
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= max_response_bytes:
                        break
            finally:
                await response.aclose()
    except TargetRefused as refused:
        return _failure("refused", refused.reason, started)
    except (TimeoutError, httpx.TimeoutException, httpx.HTTPError, OSError) as error:
        # Once the status line has arrived the receiver has answered; trouble with the rest of
        # the body must not turn an accepted webhook into a retry (and a duplicate).
        if response is None:
            if isinstance(error, TimeoutError | httpx.TimeoutException):
                return _failure("timeout", f"no complete answer within {timeout:g}s", started)
            kind = type(error).__name__ if isinstance(error, httpx.HTTPError) else "network error"
            return _failure(kind, error, started)
    retry_after = None
    if response.status_code in _RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return AttemptResult(
        status_code=response.status_code,
        retry_after=retry_after,
        elapsed=time.monotonic() - started,
    )
