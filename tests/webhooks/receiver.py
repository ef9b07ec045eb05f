"""A real HTTP receiver on 127.0.0.1 for webhook tests: it records every request, counts every
connection, and answers from a script (status and headers per request, or a black hole)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # accept, read, and never answer


class Receiver:
    def __init__(self, script: Callable[[int], Answer] | None = None) -> None:
        self.script = script or (lambda n: Answer())
        self.requests: list[Received] = []
        self.connections = 0
        self.arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(method, path, headers, body)
            answer = self.script(len(self.requests))
            async with self.arrived:
                self.requests.append(received)
                self.arrived.notify_all()
            if answer.hold:
                self._held.append(writer)
                return
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
            head = f"HTTP/1.1 {answer.status} X\r\ncontent-length: 0\r\n{extra}connection: close\r\n\r\n"
            writer.write(head.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer not in self._held:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def wait_for(self, count: int, seconds: float = 30) -> list[Received]:
        """Wait until `count` requests arrived (a deadline, not a timing assertion)."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= count), seconds)
        return self.requests[:count]
