"""The bare relay: the baseline of streamed output, a trivial grpc.aio process built like `serve`.

Same grpcio, same server options (`agenttasks.app.GRPC_OPTIONS`), one process, the default
asyncio loop, as `bench.echo_server`. Raw bytes both ways through grpc's generic handlers (no
protobuf, no store, no auth):

- `bench.Relay/Publish` (client streaming) takes the writers' chunks. Like the SDK worker's one
  Connect stream, one call carries every task of a writer process, and each message packs what
  the writer had queued at that moment (`pack`): items of task id and chunk; an empty chunk ends
  that task's output.
- `bench.Relay/Watch` (server streaming) takes a task id and sends an empty message once it is
  subscribed (the snapshot's place), then that task's chunks as they come: one message each,
  as WatchTask sends each output event, except that chunks already waiting when the stream is
  ready to send go together; it ends after the task's last.

`python -m bench.relay serve` prints `relay gRPC listening on HOST:PORT` and stops on SIGTERM.
`python -m bench.relay write --server HOST:PORT --tasks N --count C --rate R --limit S` is the
writers' process: it connects, prints `relay writer ready`, waits for SIGUSR1, then writes C
chunks per task (stamped, or `--kind numbered`) at R per second each, or as fast as it can with
R = 0 (`bench.streaming.paced_writes`, as the SDK worker does), ends every task, with `--record FILE`
writes what each writer did as JSON, prints `relay writer done` and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path

import grpc

from agenttasks.app import GRPC_OPTIONS
from bench.streaming import numbered, paced_writes, stamped

SERVICE = "bench.Relay"
PUBLISH = f"/{SERVICE}/Publish"
WATCH = f"/{SERVICE}/Watch"
_ITEM = struct.Struct("!HI")  # task id length, chunk length
MAX_ITEMS_PER_MESSAGE = 64  # as the SDK packs reports
READY_SECONDS = 30.0
LINGER_SECONDS = 600.0


def task_ids(count: int) -> list[bytes]:
    return [f"task-{i:05d}".encode() for i in range(count)]


def pack(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_ITEM.pack(len(task), len(chunk)) + task + chunk for task, chunk in items)


def unpack(message: bytes) -> Iterator[tuple[bytes, bytes]]:
    at = 0
    while at < len(message):
        task_size, chunk_size = _ITEM.unpack_from(message, at)
        at += _ITEM.size
        yield message[at : at + task_size], message[at + task_size : at + task_size + chunk_size]
        at += task_size + chunk_size


class Relay:
    """Watchers by task id, each with its own queue, as the event hub keeps one per watcher."""

    def __init__(self) -> None:
        self.watchers: dict[bytes, set[asyncio.Queue[bytes | None]]] = {}

    async def publish(self, requests: AsyncIterator[bytes], context: object) -> bytes:
        async for message in requests:
            for task, chunk in unpack(message):
                item = chunk or None  # an empty chunk: the task's output is over
                for queue in self.watchers.get(task, ()):
                    queue.put_nowait(item)
        return b""

    async def watch(self, task: bytes, context: object) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.watchers.setdefault(task, set()).add(queue)
        try:
            yield b""
            while (chunk := await queue.get()) is not None:
                # What waits behind it goes in the same message, as the SDK packs its reports.
                more, end = [chunk], False
                while not queue.empty():
                    if (item := queue.get_nowait()) is None:
                        end = True
                        break
                    more.append(item)
                yield b"".join(more) if len(more) > 1 else chunk
                if end:
                    return
        finally:
            queues = self.watchers.get(task, set())
            queues.discard(queue)
            if not queues:
                self.watchers.pop(task, None)

    def close(self) -> None:
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(None)


async def serve() -> None:
    relay = Relay()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    handlers = {
        "Publish": grpc.stream_unary_rpc_method_handler(relay.publish),
        "Watch": grpc.unary_stream_rpc_method_handler(relay.watch),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"relay gRPC listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    relay.close()
    await server.stop(1.0)


async def _packed(queue: asyncio.Queue[tuple[bytes, bytes] | None]) -> AsyncIterator[bytes]:
    """One message per wake-up with whatever is queued (at most 64 items), until a None."""
    while (item := await queue.get()) is not None:
        items = [item]
        end = False
        while len(items) < MAX_ITEMS_PER_MESSAGE and not queue.empty():
            if (more := queue.get_nowait()) is None:
                end = True
                break
            items.append(more)
        yield pack(items)
        if end:
            return


async def write(args: argparse.Namespace) -> None:
    go, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queue: asyncio.Queue[tuple[bytes, bytes] | None] = asyncio.Queue()
    async with grpc.aio.insecure_channel(args.server) as channel:
        await asyncio.wait_for(channel.channel_ready(), READY_SECONDS)
        call = channel.stream_unary(PUBLISH, None, None)(_packed(queue))  # raw bytes both ways
        print("relay writer ready", flush=True)
        await asyncio.wait_for(go.wait(), READY_SECONDS)

        async def one(task: bytes) -> dict[str, object]:
            async def put(i: int, now: int) -> None:
                chunk = numbered(i) if args.kind == "numbered" else stamped(i, now)
                queue.put_nowait((task, chunk.encode()))

            # Spread the tasks' chunks over one interval rather than all at its start, as the worker does.
            offset = random.uniform(0, 1 / args.rate) if args.rate > 0 else 0.0  # noqa: S311 - not cryptography
            times: list[int] | None = [] if args.kind == "numbered" else None
            pace = await paced_writes(args.count, args.rate, args.limit, put, offset_seconds=offset, times=times)
            queue.put_nowait((task, b""))
            return {**asdict(pace), "times": times}

        tasks = task_ids(args.tasks)
        paces = await asyncio.gather(*(one(task) for task in tasks))
        queue.put_nowait(None)
        await asyncio.wait_for(call, READY_SECONDS)
    if args.record is not None:
        streams = {task.decode(): pace for task, pace in zip(tasks, paces, strict=True)}
        args.record.write_text(json.dumps({"streams": streams}))
    print("relay writer done", flush=True)
    # Stay until stopped, so the harness can sample this process's CPU when it chooses.
    await asyncio.wait_for(stop.wait(), LINGER_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the relay")
    writer = commands.add_parser("write", help="run the writers")
    writer.add_argument("--server", required=True)
    writer.add_argument("--tasks", type=int, required=True)
    writer.add_argument("--count", type=int, required=True, help="chunks per task")
    writer.add_argument("--rate", type=float, required=True, help="chunks per second per task")
    writer.add_argument("--limit", type=float, required=True, help="seconds at most")
    writer.add_argument("--kind", choices=("stamped", "numbered"), default="stamped", help="the chunks' form")
    writer.add_argument("--record", type=Path)
    args = parser.parse_args()
    asyncio.run(serve() if args.command == "serve" else write(args))


if __name__ == "__main__":
    main()
