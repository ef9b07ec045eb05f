"""`Worker`: serve one agent's tasks with an async handler, over a stream that heals itself.

The worker keeps one Connect stream open and runs the handler once per assigned task. When the
stream breaks it cancels the running handlers and waits for them before it reconnects (with
exponential backoff and jitter), because the server requeues those tasks and may hand them to
this very worker again: a task must never run twice at once here. Errors no retry can fix (a
bad key, an unknown agent) end `run()` with `ConnectRefused` instead of looping forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from types import TracebackType

import grpc

from agenttasks.core.dispatch import MAX_CAPACITY
from agenttasks.heap import freeze_startup_objects
from agenttasks.reach import unreachable
from agenttasks.v1 import worker_service_pb2
from agenttasks.worker.connection import ConnectRefused, Session, StreamEnded, describe
from agenttasks.worker.context import Handler

log = logging.getLogger("agenttasks.worker")

FIRST_BACKOFF_SECONDS = 0.5

CHANNEL_OPTIONS = [
    # Notice a dead connection (a vanished server sends nothing, and heartbeats have no answer)
    # within ~30 s. The server allows pings every 10 s; more often would get us disconnected.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # An assignment carries the task's output so far, which may pass gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", -1),
]


def default_name() -> str:
    """hostname:pid, so the server's listings tell workers apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_seconds(failures: int, cap: float) -> float:
    """Exponential with jitter, so a fleet of workers does not reconnect in lockstep."""
    ceiling = min(cap, FIRST_BACKOFF_SECONDS * 2**failures)
    return float(ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not cryptography


class Worker:
    """Takes one agent's tasks and runs `handler` for each, up to `capacity` at a time.

    Use `await worker.run()` (until `worker.stop()`), or `async with worker:` to run it in the
    background. Stopping cancels the running handlers; the server requeues their tasks.
    """

    def __init__(
        self,
        server: str,
        api_key: str,
        agent_id: str,
        handler: Handler,
        capacity: int = 1,
        name: str | None = None,
        *,
        max_backoff: float = 10.0,
        freeze_gc: bool = True,
    ) -> None:
        """`freeze_gc`: when `run()` starts, exempt the objects the process holds by then from
        the garbage collector's full passes (`gc.freeze()`, after one collection), so that none
        of them stalls the tasks in flight for tens of milliseconds. Pass False when the worker
        shares its process with code that tunes the collector itself."""
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}, got {capacity}")
        if not agent_id:
            raise ValueError("agent_id is required")
        self.server = server
        self.agent_id = agent_id
        self.capacity = capacity
        self.name = name or default_name()
        self.handler = handler
        self.max_backoff = max_backoff
        self.freeze_gc = freeze_gc
        self.connected = asyncio.Event()
        """Set while the worker holds a welcomed stream."""
        self.worker_id: str | None = None
        """The id the server gave the current (or last) connection."""
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._stopping = asyncio.Event()
        self._ended = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"Worker(server={self.server!r}, agent_id={self.agent_id!r}, capacity={self.capacity})"

    async def run(self) -> None:
        """Serve tasks until `stop()`; raises `ConnectRefused` when the server will never accept us."""
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        if self.freeze_gc:
            freeze_startup_objects()
        try:
            await self._serve()
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._running = False
            self.connected.clear()
            self._ended.set()

    def stop(self) -> None:
        """Ask `run()` to return: handlers are cancelled, the stream closed. Safe to call twice.

        Call it from the event loop's thread (a signal handler installed with
        `loop.add_signal_handler` qualifies); from another thread use `loop.call_soon_threadsafe`.
        """
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping.is_set()

    async def wait_connected(self) -> None:
        """Wait until the worker is connected; raises what ended `run()` if it ended first."""
        waits = [asyncio.ensure_future(self.connected.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if not self.connected.is_set():
            if self._error is not None:
                raise self._error
            raise RuntimeError("the worker stopped before it connected")

    async def __aenter__(self) -> Worker:
        self._task = asyncio.create_task(self.run(), name=f"agenttasks-worker-{self.agent_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._task is None:
            return
        task, self._task = self._task, None
        try:
            await task
        except Exception:
            if exc is None:
                raise
            log.exception("the worker failed while another error was raised")

    async def _serve(self) -> None:
        hello = worker_service_pb2.Hello(agent_id=self.agent_id, capacity=self.capacity, worker_name=self.name)
        failures = 0
        while not self._stopping.is_set():
            channel = grpc.aio.insecure_channel(self.server, options=CHANNEL_OPTIONS)
            try:
                failures = await self._session(channel, hello, failures)
            finally:
                await channel.close(grace=None)
            if self._stopping.is_set():
                break
            delay = backoff_seconds(failures, self.max_backoff)
            failures += 1
            log.info("reconnecting in %.1fs", delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def _session(self, channel: grpc.aio.Channel, hello: worker_service_pb2.Hello, failures: int) -> int:
        """One connection from hello to its end; the failure count for the next backoff."""
        try:
            session = await Session.open(channel, self._metadata, hello, self.handler)
        except ConnectRefused:
            raise
        except grpc.aio.AioRpcError as error:
            code, reason, message = describe(error)
            if code == "UNAVAILABLE" and not reason:  # the channel's own failure: say it plainly
                log.warning("%s", unreachable(message, self.server))
            else:
                log.warning("cannot connect to %s: %s: %s", self.server, code, message)
            return failures
        except (StreamEnded, TimeoutError) as error:
            log.warning("cannot connect to %s: %s", self.server, error or "no welcome in time")
            return failures
        self.worker_id = session.welcome.worker_id
        self.connected.set()
        log.info(
            "connected to %s as worker %s (agent %s, capacity %d)",
            self.server,
            self.worker_id,
            self.agent_id,
            self.capacity,
        )
        try:
            await session.serve(self._stopping)
        except grpc.aio.AioRpcError as error:
            code, _, message = describe(error)
            log.warning("connection to %s lost: %s: %s", self.server, code, message)
        except StreamEnded as error:
            log.warning("connection to %s lost: %s", self.server, error)
        finally:
            self.connected.clear()
        return 0
