"""Background loops as named tasks under one supervisor.

If a loop dies, the supervisor records why and sets `failed`, and `serve` stops the whole
service loudly: a server that silently stopped expiring leases or purging keys is worse than
one that exits and gets restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agenttasks.core.errors import StoreUnreachable

log = logging.getLogger(__name__)

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Loop) -> None:
        """Run `loop(stopping)` until it returns after `stopping` is set."""
        task = asyncio.create_task(loop(self.stopping), name=name)
        task.add_done_callback(self._on_done)
        self._tasks[name] = task

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if self.stopping.is_set() or task.cancelled():
            return
        error = task.exception()
        why = f"background loop {task.get_name()} {'failed: ' + repr(error) if error else 'ended unexpectedly'}"
        log.critical(why, exc_info=error)
        if not self.failed.done():
            self.failed.set_result(why)

    async def stop(self, wait_seconds: float = 5.0) -> None:
        """Ask every loop to finish, then cancel what has not. Safe to call twice."""
        self.stopping.set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=wait_seconds)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def every(seconds: float, stopping: asyncio.Event, action: Callable[[], Awaitable[object]]) -> None:
    """Run `action` every `seconds` until stopping is set (the shape of most periodic loops)."""
    while not stopping.is_set():
        try:
            await action()
        except StoreUnreachable as error:  # the store says so once; the next round tries again
            log.debug("%s", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=seconds)
