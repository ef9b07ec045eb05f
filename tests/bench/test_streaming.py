"""The pieces behind the streaming workloads check what they claim to check: chunk forms, the
watchers' order and byte checks, the relay's framing and fan-out, and the SSE reader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from bench import relay
from bench.rest import Connection, RestError
from bench.streaming import CHUNK_BYTES, Stamped, Whole, numbered, paced_writes, parse_stamped, stamped
from bench.workloads.stream_one import per_chunk_us


def test_both_chunk_forms_are_32_byte_lines() -> None:
    assert len(numbered(0)) == len(numbered(32_767)) == CHUNK_BYTES
    line = stamped(7, time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    assert len(line) == CHUNK_BYTES and line.endswith("\n")
    assert parse_stamped(stamped(12, 345)[:-1]) == (12, 345)
    with pytest.raises(ValueError, match="not a stamped chunk"):
        parse_stamped(numbered(3)[:-1])


def test_stamped_takes_several_chunks_per_event_and_split_chunks() -> None:
    got = Stamped()
    text = stamped(0, 10) + stamped(1, 20) + stamped(2, 30)
    got.add(text[:40], 100)  # one chunk and a piece of the next
    got.add(text[40:], 200)
    got.finish()
    assert (got.error, got.sent_ns, got.arrived_ns, got.events) == ("", [10, 20, 30], [100, 200, 200], 2)


@pytest.mark.parametrize(
    ("numbers", "error"),
    [([0, 2], "chunk 2 arrived where 1 was due"), ([0, 1, 1], "chunk 1 arrived where 2 was due")],
)
def test_stamped_reports_a_missing_or_repeated_chunk(numbers: list[int], error: str) -> None:
    got = Stamped()
    got.add("".join(stamped(i, 1) for i in numbers), 2)
    assert got.error == error


def test_stamped_reports_output_that_ends_inside_a_chunk() -> None:
    got = Stamped()
    got.add(stamped(0, 1)[:20], 2)
    got.finish()
    assert "ends inside a chunk" in got.error


def test_whole_accepts_exactly_what_was_written_and_says_where_it_differs() -> None:
    whole = Whole()
    text = "".join(numbered(i) for i in range(5))
    whole.add(text[:50], 1)
    whole.add(text[50:], 2)
    assert whole.mismatch(5) == ""
    assert whole.arrived_ns == [1, 2, 2, 2, 2]
    assert "got 160 bytes where 192 were written" in whole.mismatch(6)
    swapped = Whole()
    swapped.add(numbered(1) + numbered(0), 1)
    assert "first differ at byte 30 (chunk 0)" in swapped.mismatch(2)


@pytest.mark.asyncio
async def test_paced_writes_keeps_the_schedule_and_stops_at_the_limit() -> None:
    written: list[int] = []

    async def write(i: int, now: int) -> None:
        written.append(i)

    pace = await paced_writes(5, 200.0, 10.0, write)
    assert (written, pace.written, pace.stopped_by_limit) == ([0, 1, 2, 3, 4], 5, False)
    assert pace.ended_ns - pace.started_ns >= 4 * 5_000_000  # chunk 4 is due 20 ms after the start
    pace = await paced_writes(1000, 100.0, 0.05, write)
    assert pace.stopped_by_limit and 4 <= pace.written <= 7


def test_relay_items_survive_packing() -> None:
    items = [(b"task-1", b"abc"), (b"task-22", b""), (b"t", b"x" * 70_000)]
    assert list(relay.unpack(relay.pack(items))) == items


@pytest.mark.asyncio
async def test_the_relay_fans_chunks_out_by_task_and_ends_a_watch_with_its_task() -> None:
    hub = relay.Relay()
    server = grpc.aio.server()
    handlers = {
        "Publish": grpc.stream_unary_rpc_method_handler(hub.publish),
        "Watch": grpc.unary_stream_rpc_method_handler(hub.watch),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(relay.SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = channel.unary_stream(relay.WATCH, None, None)
            calls = {task: aiter(watch(task)) for task in (b"a", b"b")}
            for call in calls.values():
                assert await anext(call) == b""  # subscribed

            async def messages() -> AsyncIterator[bytes]:
                yield relay.pack([(b"a", b"1"), (b"b", b"2"), (b"c", b"lost")])
                yield relay.pack([(b"a", b"3"), (b"a", b""), (b"b", b"")])

            await channel.stream_unary(relay.PUBLISH, None, None)(messages())
            got = {task: b"".join([chunk async for chunk in call]) for task, call in calls.items()}
    finally:
        await server.stop(None)
    assert got == {b"a": b"13", b"b": b"2"}


@pytest.mark.asyncio
async def test_events_reads_server_sent_events_across_http_chunks() -> None:
    body = [b'data: {"n": 1}\n\ndata: {"n"', b": 2}\n\n", b""]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in body:
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        connection = Connection(f"http://127.0.0.1:{port}")
        request = Connection.get("/watch", f"127.0.0.1:{port}", {})
        assert [data async for data in connection.events(request)] == [b'{"n": 1}', b'{"n": 2}']


@pytest.mark.asyncio
async def test_events_refuses_an_answer_that_is_not_an_event_stream() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        connection = Connection(f"http://127.0.0.1:{port}")
        with pytest.raises(RestError, match="HTTP 404"):
            async for _ in connection.events(Connection.get("/watch", f"127.0.0.1:{port}", {})):
                pass


def test_per_chunk_times_compare_the_first_and_last_chunks() -> None:
    one_by_one = [10 * (i + 1) for i in range(10)]  # a chunk every 10 ns from 0
    assert per_chunk_us(one_by_one, 0, 3) == (0.0, 0.0, 3)  # rounded to 0.1 µs
    slower = [1000 * (i + 1) for i in range(5)] + [5000 + 3000 * (i + 1) for i in range(5)]
    assert per_chunk_us(slower, 0, 2) == (1.0, 3.0, 2)


def test_per_chunk_times_widen_a_window_to_the_events_that_hold_it() -> None:
    # Three events of four chunks each, at 4, 8 and 20 µs: the last two chunks share the last
    # event, so the last window is that whole event, 12 µs for 4 chunks.
    times = [4000] * 4 + [8000] * 4 + [20_000] * 4
    assert per_chunk_us(times, 0, 2) == (1.0, 3.0, 2)
    assert per_chunk_us([5000] * 8, 0, 2) == (0.6, 0.6, 2)
