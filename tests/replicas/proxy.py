"""A TCP proxy in front of the local PostgreSQL, to take it away and bring it back.

The PostgreSQL server on this machine is shared and not ours to restart. What a restart does to
a client is what `outage` does: every open connection breaks at once, new connections are
refused for a while, then accepted again. The servers under test reach PostgreSQL only
through the proxy, so they cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class PostgresProxy:
    """Listens on 127.0.0.1:`port` and forwards each connection to `target`."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, database_url: str) -> str:
        """`database_url` (of the local server, host:port spelled out) pointed at the proxy."""
        host, port = self.target
        assert f"@{host}:{port}/" in database_url, database_url
        return database_url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/", 1)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and break every open one, as a server going down does."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """PostgreSQL is gone inside the block, and back (on the same port) after it."""
        await self.stop()
        try:
            yield
        finally:
            await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()
