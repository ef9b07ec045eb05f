"""Other servers on the same store: their commits reach this server's watchers and workers.

On a store several servers share (PostgreSQL), each server hears of the others' commits as
`TaskNews` (`SharedStore.follow_others`). Most news concerns nobody here and costs a dictionary
lookup or two:
- news of a task queued (new, or given back) starts a dispatch round for its agent if a worker
  of that agent is connected here; rounds claim with SKIP LOCKED, so servers racing for one task
  never both get it;
- news of a task watched here, or held by a worker connected here, is read from the store (the
  task as it now is, and the announced events) and published on the local hub, as a change made
  here is: watchers get the events, and the dispatcher delivers a client's messages and stops a
  task that ended elsewhere (cancelled, timed out, its lease taken back).

News arriving while a read runs waits and is read in the next one, together.

A read can be stale: begun before a change made here committed, and done after this server
published that change. Publishing the older task then would look, to the dispatcher, as if the
task had been taken from its worker. So the newest sequence published here is kept for every
task of interest, and an older read is read again. A read that is not stale may repeat events
published here already: watchers skip what they have seen, and the dispatcher gives a worker
each client message once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agenttasks.core.dispatch import Dispatcher
from agenttasks.core.model import Task, TaskEvent, TaskStatus
from agenttasks.core.ports import ReadTx, Store, TaskNews
from agenttasks.core.watch import EventHub

log = logging.getLogger(__name__)

# Tasks read in one read transaction, and events read per task (a watcher reads on past that).
READ_BATCH = 200
EVENTS_PER_READ = 1000
# After a failed read (the store unreachable), wait this long before trying it again.
RETRY_SECONDS = 0.5


@dataclass(slots=True)
class _Wanted:
    tenant: str
    after: int
    """Read the task's events with a sequence above this."""


class Replicas:
    """This server's side of the news other servers send (`core.ports.Neighbours`)."""

    def __init__(
        self, store: Store, hub: EventHub, dispatcher: Dispatcher, forget_keys: Callable[[list[str] | None], None]
    ) -> None:
        """`forget_keys(ids)` drops cached API keys (all of them for None), so a key revoked
        elsewhere stops working here at once."""
        self._store = store
        self._hub = hub
        self._dispatcher = dispatcher
        self._forget_keys = forget_keys
        self._known: dict[str, int] = {}
        self._wanted: dict[str, _Wanted] = {}
        self._reader: asyncio.Task[None] | None = None
        hub.listen(self._published)

    def _cares(self, task_id: str) -> bool:
        return self._hub.watched(task_id) or self._dispatcher.holds(task_id)

    def _published(self, task: Task, events: list[TaskEvent]) -> None:
        """Hub listener: every change published here, made here or read from the others."""
        task_id = task.task_id
        if task.status.terminal or not self._cares(task_id):
            self._known.pop(task_id, None)
        elif task.last_sequence > self._known.get(task_id, 0):
            self._known[task_id] = task.last_sequence

    # --- Neighbours ---

    def tasks_changed(self, news: list[TaskNews]) -> None:
        for item in news:
            if item.status is TaskStatus.QUEUED:
                self._dispatcher.poke(item.tenant, item.agent_id)
            task_id = item.task_id
            if item.last_sequence <= self._known.get(task_id, 0) or not self._cares(task_id):
                continue
            self._want(task_id, item.tenant, item.first_sequence - 1)
        self._read_soon()

    def keys_revoked(self, key_ids: list[str]) -> None:
        self._forget_keys(key_ids)

    def may_have_missed(self) -> None:
        self._forget_keys(None)
        self._hub.catch_up()
        for tenant, agent_id in self._dispatcher.served():
            self._dispatcher.poke(tenant, agent_id)
        for tenant, _, task_id in self._dispatcher.held():
            # Only what came after the last change published here: a message the worker was
            # given already must not reach it twice.
            if (known := self._known.get(task_id)) is not None:
                self._want(task_id, tenant, known)
        self._read_soon()

    # --- reading what others changed ---

    def _want(self, task_id: str, tenant: str, after: int) -> None:
        wanted = self._wanted.get(task_id)
        if wanted is None:
            self._wanted[task_id] = _Wanted(tenant, after)
        elif after < wanted.after:
            wanted.after = after

    def _read_soon(self) -> None:
        if self._wanted and (self._reader is None or self._reader.done()):
            self._reader = asyncio.create_task(self._read_all(), name="replicas-read")

    async def _read_all(self) -> None:
        while self._wanted:
            batch = dict(list(self._wanted.items())[:READ_BATCH])
            for task_id in batch:
                del self._wanted[task_id]
            try:
                changes = await self._store.read(functools.partial(_read, batch=batch))
            except Exception as error:  # the store is unreachable: try again shortly
                log.warning("cannot read %d tasks other servers changed (%s); retrying", len(batch), error)
                for task_id, wanted in batch.items():
                    self._want(task_id, wanted.tenant, wanted.after)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for task, events in changes:
                if task.last_sequence < self._known.get(task.task_id, 0):
                    # Stale: this server published a newer state while the read ran. Read it
                    # again; a read begun now sees at least that.
                    self._want(task.task_id, task.tenant, batch[task.task_id].after)
                    continue
                self._hub.publish_relayed(task, events)


def _read(tx: ReadTx, *, batch: dict[str, _Wanted]) -> list[tuple[Task, list[TaskEvent]]]:
    out: list[tuple[Task, list[TaskEvent]]] = []
    for task_id, wanted in batch.items():
        task = tx.get_task(wanted.tenant, task_id)
        if task is None:
            continue
        events = tx.events_after(wanted.tenant, task_id, wanted.after, EVENTS_PER_READ)
        if events:
            out.append((task, events))
    return out
