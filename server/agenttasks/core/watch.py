"""In-process fan-out of committed task events to WatchTask streams.

The store is the source of truth; the hub is only the fast path. A watcher subscribes before
it reads the snapshot, so nothing committed afterwards can slip between the two. Each
subscription has a bounded queue: a watcher too slow to keep up is marked as lagging instead of
growing memory without bound, and catches up by reading the store. Gaps (an event published out
of order) are filled from the store the same way, so every watcher sees every event once, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from agenttasks.core.model import Task, TaskEvent, TaskStatus

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024
# Tasks whose last published state the hub keeps for watch snapshots (`keep_latest`), and the
# characters of text and JSON (message, metadata, prompt, result) beyond which a task is not
# kept: at most LATEST_LIMIT tasks of about this size, whatever clients send.
LATEST_LIMIT = 1024
LATEST_TEXT = 4 * 1024

# Stream end reasons, sent on the final `end` message of a watch.
END_TASK_FINISHED = "TASK_FINISHED"
END_SERVER_SHUTDOWN = "SERVER_SHUTDOWN"


class _Shutdown:
    """Queued to every subscription when the hub closes."""


_SHUTDOWN = _Shutdown()


class CatchUp:
    """Queued to every subscription when events may have been missed (another server's news was
    lost): the watcher reads the store past what it has seen."""


CATCH_UP = CatchUp()


class Subscription:
    """One watcher's view of the hub: live events of one task, or a lag/shutdown signal."""

    def __init__(self, hub: EventHub, task_id: str) -> None:
        self._hub = hub
        self.task_id = task_id
        self._queue: asyncio.Queue[TaskEvent | CatchUp | _Shutdown] = asyncio.Queue()
        self.lagged = False
        self.closed = False

    def _offer(self, item: TaskEvent | CatchUp | _Shutdown) -> None:
        if isinstance(item, TaskEvent) and self._queue.qsize() >= QUEUE_LIMIT:
            self.lagged = True  # the watcher re-reads the store; dropping here loses nothing
            return
        self._queue.put_nowait(item)

    async def next(self) -> TaskEvent | CatchUp | None:
        """The next live event, CATCH_UP, or None when the hub shut down."""
        item = await self._queue.get()
        return None if isinstance(item, _Shutdown) else item

    def drain(self) -> None:
        """Forget queued events after catching up from the store."""
        self.lagged = False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Shutdown):  # keep it: the watcher must still see the shutdown
                self._queue.put_nowait(item)
                return

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._remove(self)


Listener = Callable[[Task, list[TaskEvent]], None]


def _json_size(value: object) -> int:
    return len(json.dumps(value)) if value else 0


class EventHub:
    """Routes committed changes: their events to the watchers of the task, and the task with its
    events to listeners (the dispatcher, which pushes cancels and messages to workers)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._listeners: list[Listener] = []
        self._closed = False
        # True while a change another server committed is being published here (see
        # `publish_relayed`): listeners that count work done here (metrics) skip it.
        self.relaying = False
        # Per task: its last published state, and the size of what never changes (message, metadata).
        self._latest: dict[str, tuple[Task, int]] | None = None

    def keep_latest(self) -> None:
        """Remember the last published state of the most recently changed tasks, so that a watch
        takes its snapshot here instead of reading the store on another thread.

        Only for a server that publishes every change to its tasks itself: the one server of a
        SQLite file (`SqliteStore.serve_alone`; admin commands on the file write keys, never
        tasks). Replicas hear only of tasks someone watches, so their memory could lag the store,
        and a watcher that subscribed after the news it lacks would wait for it forever.
        """
        self._latest = {}

    def latest(self, task_id: str) -> Task | None:
        """The task as last published here, if remembered (`keep_latest`).

        Taken in the same step as `subscribe`, it is a snapshot no later event can slip past:
        each later change is published after it, to the new subscription."""
        if self._latest is None or (known := self._latest.get(task_id)) is None:
            return None
        return known[0]

    def forget_agent(self, tenant: str, agent_id: str) -> None:
        """Drop the remembered tasks of an agent whose finished tasks are being deleted."""
        if self._latest:
            for task_id in [k for k, (t, _) in self._latest.items() if (t.tenant, t.agent_id) == (tenant, agent_id)]:
                del self._latest[task_id]

    def listen(self, listener: Listener) -> None:
        """Call `listener(task, events)` after every committed change. It must not block."""
        self._listeners.append(listener)

    def subscription_count(self) -> int:
        """Open subscriptions: one per WatchTask stream on this server."""
        return sum(len(subs) for subs in self._subs.values())

    def watched(self, task_id: str) -> bool:
        """Whether anyone here watches the task (news of it from other servers is worth a read)."""
        return task_id in self._subs

    def catch_up(self) -> None:
        """Make every watcher read the store past what it has seen (news may have been lost)."""
        for subs in self._subs.values():
            for sub in subs:
                sub._offer(CATCH_UP)

    def subscribe(self, task_id: str) -> Subscription:
        sub = Subscription(self, task_id)
        if self._closed:
            sub._offer(_SHUTDOWN)
        else:
            self._subs[task_id].add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.task_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.task_id]

    def publish(self, task: Task, events: list[TaskEvent]) -> None:
        """Hand a committed change (the task as it now is, and its new events) on. Never blocks."""
        if not events:
            return
        if self._latest is not None:
            self._remember(task)
        for sub in self._subs.get(task.task_id, ()):
            for event in events:
                sub._offer(event)
        for listener in self._listeners:
            # The change is committed whatever a listener does: one that fails must not keep
            # the others (workers, webhooks) or the rest of the publisher's changes from it.
            try:
                listener(task, events)
            except Exception:
                log.exception("a listener failed on task %s; the change itself is stored", task.task_id)

    def _remember(self, task: Task) -> None:
        latest = self._latest
        assert latest is not None  # noqa: S101
        known = latest.pop(task.task_id, None)
        if known is not None and known[0].last_sequence > task.last_sequence:
            latest[task.task_id] = known  # publishers of two writes may run out of order
            return
        # Message and metadata never change after the Submit: measured when the task is new here.
        fixed = known[1] if known is not None else len(task.message) + _json_size(task.metadata)
        size = fixed + len(task.input_prompt)
        if task.result is not None:
            size += len(task.result.text) + _json_size(task.result.data)
        if size > LATEST_TEXT:
            return
        latest[task.task_id] = (task, fixed)
        if len(latest) > LATEST_LIMIT:
            del latest[next(iter(latest))]  # the least recently changed

    def publish_relayed(self, task: Task, events: list[TaskEvent]) -> None:
        """`publish` a change another server committed and this one read back from the store."""
        self.relaying = True
        try:
            self.publish(task, events)
        finally:
            self.relaying = False

    def close(self) -> None:
        """End every watch with a shutdown signal (on server drain)."""
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub._offer(_SHUTDOWN)


@dataclass(frozen=True, slots=True)
class Snapshot:
    task: Task


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of every watch: why it ended, and where a resume would start."""

    reason: str
    task_id: str
    status: TaskStatus
    last_sequence: int


WatchItem = Snapshot | TaskEvent | StreamEnd
FetchEvents = Callable[[int], Awaitable[list[TaskEvent]]]


async def _stored_after(fetch_after: FetchEvents, after: int) -> AsyncIterator[TaskEvent]:
    """Every stored event after `after`, page by page, until the store has no more."""
    while batch := await fetch_after(after):
        for event in batch:
            yield event
        after = batch[-1].sequence


async def follow(
    sub: Subscription, task: Task, after_sequence: int, fetch_after: FetchEvents
) -> AsyncIterator[WatchItem]:
    """The watch protocol over a subscription taken before `task` was read.

    Yields the snapshot, then stored events after `after_sequence` up to the snapshot, then live
    events, and finally a StreamEnd. `fetch_after(seq)` reads a page of stored events after seq.
    """
    yield Snapshot(task)
    last, status = task.last_sequence, task.status
    if 0 < after_sequence < last:
        async for event in _stored_after(fetch_after, after_sequence):
            if event.sequence > last:
                break
            yield event
    catch_up = False
    while not status.terminal:
        if catch_up or sub.lagged:
            # The store has every committed event: read past the gap or the dropped ones.
            sub.drain()
            catch_up = False
            async for event in _stored_after(fetch_after, last):
                yield event
                last, status = event.sequence, event.status
                if status.terminal:
                    break
            continue
        live = await sub.next()
        if live is None:
            yield StreamEnd(END_SERVER_SHUTDOWN, task.task_id, status, last)
            return
        if isinstance(live, CatchUp):
            catch_up = True
            continue
        if live.sequence == last + 1:
            yield live
            last, status = live.sequence, live.status
        elif live.sequence > last + 1:
            catch_up = True
    yield StreamEnd(END_TASK_FINISHED, task.task_id, status, last)
