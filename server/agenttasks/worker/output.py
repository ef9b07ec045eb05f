"""A task's output on its way to the server: written at once, sent together, stored in order.

A language model emits a token at a time; if every `ctx.output()` waited for its own report to
be stored (a commit, a few milliseconds), one task could send a few hundred chunks a second. So
a chunk is queued and `output()` returns. One report per task is in flight at a time; the
chunks written meanwhile go together in the next one (up to COALESCE_BYTES), so the reports keep
pace with the writer whatever its chunk size, and the server stores each report as one output
event: watchers get every byte, in order, once. `flush()` waits until all that was written is
stored, as `drain()` does for a stream.

A report the server refuses (the task's 1 MiB of output is full; the task is no longer held)
stops the sending: the rest queued is dropped, and the refusal is raised by the next `output()`
or `flush()`. A refused report of several chunks is retried one chunk at a time, so the output
stops where it would have stopped had each chunk gone alone.

Each report carries its offset: the bytes of output sent before it. A report sent again because
its answer never came (the server's database was out of reach, maybe after the commit) is then
stored once: the server acknowledges a chunk it already has at that offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agenttasks.worker.errors import LeaseLost, ReportRejected

COALESCE_BYTES = 64 * 1024
"""At most this much output in one report (a single bigger chunk goes alone; the server takes
chunks of up to 256 KiB)."""
BUFFER_BYTES = 1024 * 1024
"""output() waits while this much is queued: a task keeps at most 1 MiB of output anyway."""

Send = Callable[[str, int], Awaitable[None]]
"""Sends one report: the text and its offset (UTF-8 bytes of the attempt's output before it)."""


class OutputStream:
    """The queue and sender of one task attempt's output (see the module docstring)."""

    def __init__(self, send: Send, offset: int = 0) -> None:
        """`offset`: the bytes of output the attempt already has (the assignment's)."""
        self._send = send
        self._offset = offset
        self._queued: list[str] = []
        self._queued_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self._room = asyncio.Event()
        self._room.set()
        self.refused: ReportRejected | None = None
        self.refusal_seen = False

    async def write(self, chunk: str) -> None:
        """Queue `chunk`; wait only while the queue is full. Raises an earlier refusal."""
        self._raise_refusal()
        if not chunk:
            return
        while self._queued_bytes >= BUFFER_BYTES:
            self._room.clear()
            await self._room.wait()
            self._raise_refusal()
        self._queued.append(chunk)
        self._queued_bytes += _size(chunk)
        self._drained.clear()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._run(), name="agenttasks-output")

    async def flush(self) -> None:
        """Wait until everything written is stored; raises a refusal, as write() does."""
        await self.drain()
        self._raise_refusal()

    async def drain(self) -> None:
        """Wait until nothing is queued or in flight, whatever the outcome."""
        await self._drained.wait()

    def close(self) -> None:
        """Drop what is queued and stop sending (the attempt is over)."""
        self._queued.clear()
        self._queued_bytes = 0
        if self._sender is not None:
            self._sender.cancel()
        self._drained.set()
        self._room.set()

    def _raise_refusal(self) -> None:
        if self.refused is not None:
            self.refusal_seen = True
            raise self.refused

    async def _run(self) -> None:
        try:
            while self._queued and self.refused is None:
                chunks = self._take()
                try:
                    await self._sent("".join(chunks))
                except LeaseLost as lost:
                    self._stop(lost)
                except ReportRejected as rejected:
                    if len(chunks) == 1:
                        self._stop(rejected)
                    else:
                        await self._one_by_one(chunks)
        finally:
            if not self._queued or self.refused is not None:
                self._drained.set()
            self._room.set()

    def _take(self) -> list[str]:
        """The queued chunks of the next report: up to COALESCE_BYTES, at least one."""
        taken: list[str] = []
        size = 0
        while self._queued:
            chunk_size = _size(self._queued[0])
            if taken and size + chunk_size > COALESCE_BYTES:
                break
            taken.append(self._queued.pop(0))
            size += chunk_size
        self._queued_bytes -= size
        if self._queued_bytes < BUFFER_BYTES:
            self._room.set()
        return taken

    async def _sent(self, text: str) -> None:
        await self._send(text, self._offset)
        self._offset += _size(text)

    async def _one_by_one(self, chunks: list[str]) -> None:
        for chunk in chunks:
            try:
                await self._sent(chunk)
            except ReportRejected as rejected:
                self._stop(rejected)
                return

    def _stop(self, refusal: ReportRejected) -> None:
        self.refused = refusal
        self._queued.clear()
        self._queued_bytes = 0


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
