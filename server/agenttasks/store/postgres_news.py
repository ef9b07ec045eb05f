"""How servers on one PostgreSQL database hear of each other's commits: NOTIFY and LISTEN.

A write function's transaction view notes what it changed (`Announcements`): the tasks that got
events, with the range of those events and the status after them, and the API keys it revoked.
The writer merges the notes of a batch's successful write functions and sends them with
`pg_notify` just before COMMIT, so they are delivered if and only if the batch commits, and
after it: a server that hears of a change can read it. Every server LISTENs on one connection
of its own (`follow`), drops what it announced itself, and hands the rest to the core
(`core.replicas`), which decides who here cares.

The channel is per schema: two agenttasks stores in two schemas of one database (as the tests
use) must not hear each other. Notifications are not durable: a server whose LISTEN connection
broke is told it may have missed some, and catches up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from typing import Any

import psycopg
from psycopg import sql

from agenttasks.core.model import Task, TaskEvent, TaskStatus
from agenttasks.core.ports import Neighbours, TaskNews

log = logging.getLogger(__name__)

# PostgreSQL refuses a payload of 8000 bytes or more; stay well under it.
MAX_PAYLOAD_BYTES = 7000
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 2.0

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def channel_for(schema: str) -> str:
    """The channel of the agenttasks store in `schema` (an identifier of at most 63 bytes)."""
    if schema == "public":
        return "agenttasks"
    return "agenttasks_" + hashlib.sha256(schema.encode()).hexdigest()[:24]


def new_origin() -> str:
    """A name for one store instance, so it can drop the notifications it sent itself."""
    return secrets.token_hex(8)


class Announcements:
    """What one write function (or one batch of them) changed that other servers must hear of."""

    __slots__ = ("keys", "tasks")

    def __init__(self) -> None:
        # task_id -> [tenant, agent_id, first event sequence (0: none yet), last sequence, status]
        self.tasks: dict[str, list[Any]] = {}
        self.keys: list[str] = []

    def task(self, task: Task) -> None:
        entry = self.tasks.get(task.task_id)
        if entry is None:
            self.tasks[task.task_id] = [task.tenant, task.agent_id, 0, task.last_sequence, task.status.value]
        else:
            entry[3] = task.last_sequence
            entry[4] = task.status.value

    def event(self, event: TaskEvent) -> None:
        entry = self.tasks.get(event.task_id)
        if entry is not None and (entry[2] == 0 or event.sequence < entry[2]):
            entry[2] = event.sequence

    def key_revoked(self, key_id: str) -> None:
        self.keys.append(key_id)

    def clear(self) -> None:
        """Forget everything noted (it was announced with a commit)."""
        self.tasks.clear()
        self.keys.clear()

    def merge(self, other: Announcements) -> None:
        for task_id, theirs in other.tasks.items():
            if theirs[2] == 0:
                continue
            ours = self.tasks.get(task_id)
            if ours is None:
                self.tasks[task_id] = list(theirs)
            else:
                ours[2] = min(ours[2], theirs[2])
                ours[3], ours[4] = theirs[3], theirs[4]
        self.keys.extend(other.keys)

    def payloads(self, origin: str) -> list[str]:
        """The notification payloads that carry everything noted: `origin` on the first line,
        then a JSON object; as many as it takes to stay under PostgreSQL's size limit."""
        entries = [[task_id, *entry] for task_id, entry in self.tasks.items() if entry[2]]
        out: list[str] = []
        head = origin + "\n"
        keys = list(self.keys)
        while entries or keys:
            chunk: list[list[Any]] = []
            size = len(head) + 32
            while entries and (not chunk or size + _size(entries[-1]) < MAX_PAYLOAD_BYTES):
                item = entries.pop()
                chunk.append(item)
                size += _size(item)
            taken: list[str] = []
            while keys and ((not chunk and not taken) or size + _size([keys[-1]]) < MAX_PAYLOAD_BYTES):
                key = keys.pop()
                taken.append(key)
                size += _size([key])
            out.append(head + _COMPACT.encode({"t": chunk, "k": taken}))
        return out


def _size(entry: list[Any]) -> int:
    return len(_COMPACT.encode(entry).encode()) + 1  # and the comma after it


def parse(payload: str) -> tuple[str, list[TaskNews], list[str]]:
    """(origin, task news, revoked key ids) of a payload `Announcements.payloads` made."""
    origin, _, body = payload.partition("\n")
    data = json.loads(body)
    news = [
        TaskNews(
            tenant=tenant,
            agent_id=agent_id,
            task_id=task_id,
            first_sequence=int(first),
            last_sequence=int(last),
            status=TaskStatus(status),
        )
        for task_id, tenant, agent_id, first, last, status in data.get("t", ())
    ]
    return origin, news, [str(key) for key in data.get("k", ())]


async def follow(
    url: str, channel: str, origin: str, neighbours: Neighbours, stopping: asyncio.Event, connect_timeout: int
) -> None:
    """LISTEN on `channel` until `stopping`, telling `neighbours` of every other origin's news.

    A lost connection (PostgreSQL restarted, a network break) is reconnected with backoff; once
    listening again, and also the first time, `neighbours.may_have_missed()` makes the core
    catch up from the store, since news sent meanwhile is gone.
    """
    delay = RECONNECT_FIRST_SECONDS
    mine = origin + "\n"
    while not stopping.is_set():
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.OperationalError as error:
            log.warning("cannot listen for other servers' changes (%s); retrying in %.1f s", _line(error), delay)
            await _pause(stopping, delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            continue
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            delay = RECONNECT_FIRST_SECONDS
            neighbours.may_have_missed()
            listening = asyncio.ensure_future(_hear(conn, mine, neighbours))
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait([listening, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await listening
            if not listening.cancelled() and (lost := listening.exception()) is not None:
                raise lost
        except psycopg.Error as error:
            log.warning("lost the connection that hears other servers' changes (%s); reconnecting", _line(error))
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        if not stopping.is_set():
            await _pause(stopping, delay)


async def _hear(conn: psycopg.AsyncConnection[Any], mine: str, neighbours: Neighbours) -> None:
    async for notify in conn.notifies():
        payload = notify.payload
        if payload.startswith(mine):
            continue
        try:
            _, news, keys = parse(payload)
        except (ValueError, TypeError, KeyError) as error:
            log.warning("ignored a notification that is not agenttasks news: %r (%s)", payload[:200], error)
            continue
        if keys:
            neighbours.keys_revoked(keys)
        if news:
            neighbours.tasks_changed(news)
    raise psycopg.OperationalError("the notification stream ended")


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
