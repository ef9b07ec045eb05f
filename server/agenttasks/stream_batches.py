"""Packing what waits in a queue into batch messages on a gRPC stream, for both ends.

Every gRPC message costs ~90 us of CPU between the two ends whatever it holds (6 us per item
when 16 travel together: `python -m bench.probes.stream_messages`), so the server's pushes and
the worker's reports that are ready at the same moment go out together. Nothing waits to fill a
batch: the first item goes as soon as it can, with whatever is already queued behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar


class _Sized(Protocol):
    def ByteSize(self) -> int: ...


Message = TypeVar("Message", bound=_Sized)


async def packed(
    # Any: only `encode` looks at the items (mypy cannot solve a union of push kinds here).
    queue: asyncio.Queue[Any],
    encode: Callable[[Any], Message],
    wrap: Callable[[list[Message]], Message],
    *,
    enabled: Callable[[], bool],
    max_items: int,
    max_bytes: int,
) -> AsyncIterator[Message]:
    """The messages for what `queue` holds, until it yields None. While `enabled()`, items
    already waiting join the first in `wrap(...)`, at most `max_items` and `max_bytes` of them;
    one that does not fit goes first in the next message. An item alone is sent unwrapped,
    whatever its size."""
    carried: Message | None = None  # drawn for a batch it did not fit in
    while True:
        if carried is None:
            if (item := await queue.get()) is None:
                return
            carried = encode(item)
        first, carried = carried, None
        if not enabled() or queue.empty():
            yield first
            continue
        batch, size, end = [first], first.ByteSize(), False
        while len(batch) < max_items and not queue.empty():
            if (more := queue.get_nowait()) is None:
                end = True
                break
            message = encode(more)
            message_size = message.ByteSize()
            if size + message_size > max_bytes:
                carried = message
                break
            batch.append(message)
            size += message_size
        yield first if len(batch) == 1 else wrap(batch)
        if end:
            return
