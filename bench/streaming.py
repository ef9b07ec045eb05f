"""Streamed output as the bench writes and watches it: the chunks, the pacing, the checks.

Every chunk is 32 bytes, a line ending in a newline, in one of two forms:

- `numbered(i)`: `f"{i:031d}\\n"`. One task's output is then fully known in advance, so its
  watcher checks that it received every byte, in order (`Whole`).
- `stamped(i, ns)`: the chunk's number and the CLOCK_MONOTONIC time its writer sent it, which
  every process on the machine shares, so a watcher computes write-to-receive latency and checks
  that no chunk went missing or came out of order (`Stamped`).

The SDK worker (`bench.worker`) and the bare relay's writer (`bench.relay`) pace their chunks
with the same `paced_writes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.loadgen import now_ns

CHUNK_BYTES = 32
_SEQ_DIGITS = 10
_NS_DIGITS = CHUNK_BYTES - _SEQ_DIGITS - 2  # a space between, a newline after


def numbered(i: int) -> str:
    return f"{i:0{CHUNK_BYTES - 1}d}\n"


def stamped(i: int, sent_ns: int) -> str:
    return f"{i:0{_SEQ_DIGITS}d} {sent_ns:0{_NS_DIGITS}d}\n"


def parse_stamped(line: str) -> tuple[int, int]:
    """(number, sent ns) of a stamped chunk without its newline; ValueError if it is not one."""
    if len(line) != CHUNK_BYTES - 1 or line[_SEQ_DIGITS] != " ":
        raise ValueError(f"not a stamped chunk: {line[:40]!r}")
    return int(line[:_SEQ_DIGITS]), int(line[_SEQ_DIGITS + 1 :])


@dataclass(slots=True)
class Pace:
    """What one paced writer did."""

    written: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    behind_max_ns: int = 0
    """The most a write started after its scheduled time (the writer could not keep up)."""
    stopped_by_limit: bool = False


async def paced_writes(
    count: int,
    rate: float,
    limit_seconds: float,
    write: Callable[[int, int], Awaitable[object]],
    *,
    offset_seconds: float = 0.0,
    times: list[int] | None = None,
) -> Pace:
    """`write(i, now_ns)` for i in 0..count-1, chunk i due `offset + i / rate` seconds after the
    start (as fast as possible when `rate` is 0), stopping early once `limit_seconds` have passed.
    A write that is late goes at once: the schedule is not pushed back. With `times`, the time
    each write returned is appended to it."""
    pace = Pace(started_ns=now_ns())
    interval = 1e9 / rate if rate > 0 else 0.0
    first_due = pace.started_ns + int(offset_seconds * 1e9)
    deadline = pace.started_ns + int(limit_seconds * 1e9)
    for i in range(count):
        now = now_ns()
        due = first_due + int(i * interval)
        if interval and due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = now_ns()
        if now > deadline:
            pace.stopped_by_limit = True
            break
        pace.behind_max_ns = max(pace.behind_max_ns, now - due)
        await write(i, now)
        pace.written += 1
        if times is not None:
            times.append(now_ns())
    pace.ended_ns = now_ns()
    return pace


class Stamped:
    """One watcher's view of one task's stamped chunks: arrival and write times, order checked."""

    __slots__ = ("_partial", "arrived_ns", "error", "events", "expected", "sent_ns")

    def __init__(self) -> None:
        self.expected = 0
        """The number of the next chunk due."""
        self.sent_ns: list[int] = []
        self.arrived_ns: list[int] = []
        self.error = ""
        """The first thing wrong: a missing, repeated or garbled chunk."""
        self.events = 0
        """Output events (or messages) that carried chunks."""
        self._partial = ""

    def add(self, text: str, at_ns: int) -> None:
        """Output text as it arrived at `at_ns` (one event may hold several chunks)."""
        if not text:
            return
        self.events += 1
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                number, sent = parse_stamped(line)
            except ValueError as error:
                self.error = self.error or str(error)
                continue
            if number != self.expected:
                self.error = self.error or f"chunk {number} arrived where {self.expected} was due"
            self.expected = number + 1
            self.sent_ns.append(sent)
            self.arrived_ns.append(at_ns)

    def finish(self) -> None:
        if self._partial:
            self.error = self.error or f"the output ends inside a chunk: {self._partial[:40]!r}"

    @property
    def chunks(self) -> int:
        return len(self.arrived_ns)


class Whole:
    """One watcher's view of a numbered output: all of it, and when each chunk completed."""

    __slots__ = ("arrived_ns", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        """The output as it arrived, one part per event (or message)."""
        self.size = 0
        self.arrived_ns: list[int] = []
        """When the output first held chunk i whole."""

    def add(self, text: str, at_ns: int) -> None:
        if not text:
            return
        self.parts.append(text)
        self.size += len(text)
        complete = self.size // CHUNK_BYTES
        self.arrived_ns.extend([at_ns] * (complete - len(self.arrived_ns)))

    def mismatch(self, chunks: int) -> str:
        """Empty when the output is exactly chunks 0..chunks-1 in order, else where it first differs."""
        got = "".join(self.parts)
        want = "".join(numbered(i) for i in range(chunks))
        if got == want:
            return ""
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        return (
            f"the watcher got {len(got):,} bytes where {len(want):,} were written; they first differ at byte "
            f"{at:,} (chunk {at // CHUNK_BYTES}): got {got[at : at + 16]!r}, want {want[at : at + 16]!r}"
        )
