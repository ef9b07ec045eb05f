"""A minimal HTTP/1.1 keep-alive client for the REST load: one request in flight per connection.

The load generator must cost the two shared cores as little as possible, so this writes a
prebuilt request and reads just enough of the answer (status line, Content-Length or chunks)
to know it is complete; `Connection.events` reads a Server-Sent Events answer (the watch route)
as it comes. It is not a general HTTP client: no redirects, no TLS, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class RestError(Exception):
    """A non-2xx answer or a broken connection."""


class Connection:
    """One keep-alive connection to `base_url` (http://host:port)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def request(method: str, path: str, host: str, headers: dict[str, str], body: object) -> bytes:
        """The bytes of one request, built once and sent many times."""
        payload = json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    async def _head(self, request: bytes) -> tuple[str, int, dict[str, str]]:
        """Send `request`; (status line, status, lower-cased headers) of its answer."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None  # noqa: S101
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status_line, status, headers

    @staticmethod
    def get(path: str, host: str, headers: dict[str, str]) -> bytes:
        """The bytes of a GET without a body."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects if the previous answer closed the connection."""
        status_line, status, headers = await self._head(request)
        assert self._reader is not None  # noqa: S101
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunks()
        else:
            raise RestError(f"answer without a length: {status_line}")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        if not 200 <= status < 300:
            raise RestError(f"HTTP {status}: {body[:200]!r}")
        return status, body

    async def events(self, request: bytes) -> AsyncIterator[bytes]:
        """The `data:` payload of each Server-Sent Event of the answer to `request` (a GET of a
        watch route), as each arrives, until the server ends the answer; the connection is closed
        then. RestError if the answer is not a 200 event stream."""
        try:
            _, status, headers = await self._head(request)
            assert self._reader is not None  # noqa: S101
            if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
                body = await self._reader.read(2000)
                raise RestError(f"HTTP {status} {headers.get('content-type', '')}: {body[:200]!r}")
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            pending = b""
            while True:
                if chunked:
                    size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    data = (await self._reader.readexactly(size + 2))[:-2]
                else:
                    data = await self._reader.read(65536)
                if not data:
                    return
                *events, pending = (pending + data).split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:"):
                            yield line[5:].lstrip(b" ")
        finally:
            await self.close()

    async def _read_chunks(self) -> bytes:
        assert self._reader is not None  # noqa: S101
        chunks: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self._reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
