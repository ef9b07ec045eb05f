"""What one message on a grpc.aio stream costs, and what packing items into fewer messages saves.

A server streams 20,000 items of 100 bytes to a client in the same process, one item per
message, then 4 and 16 per message. CPU per item covers both ends. This is the measurement
behind "fewer messages per task" as the next lever for end to end (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

ITEMS = 20_000
ITEM_BYTES = 100


async def _items(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    items, per_message = map(int, (await anext(aiter(requests))).split(b","))
    payload = b"x" * (ITEM_BYTES * per_message)
    for _ in range(items // per_message):
        yield payload


async def main(items: int = ITEMS) -> None:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(_items)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Stream", {"Items": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream("/probe.Stream/Items", None, None)  # raw bytes both ways
            for per_message in (1, 4, 16, 1, 4, 16):
                call = stream(iter([f"{items},{per_message}".encode()]))
                cpu, wall = time.process_time(), time.perf_counter()
                async for _ in call:
                    pass
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                print(
                    f"{per_message:2d} items per message: {items / wall:9,.0f} items/s, "
                    f"{cpu / items * 1e6:5.1f} us CPU per item (both ends)"
                )
    finally:
        await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
