"""Dispatch: hands an agent's queued tasks to its connected workers and keeps their leases.

Each connected worker is a `WorkerSession` with a capacity and an outbox the transport drains.
A dispatch round for an agent claims as many queued tasks as its workers have free slots, in
one write (highest priority first, FIFO within one) and assigns each to exactly one session; at
most one round per agent runs at a time, and a request for another while one runs sets it to go
again, so bursts of submits coalesce into few rounds.

A task is started for a worker inside a write function (on the event loop with SQLite, on the
store's writer thread with PostgreSQL; write functions never run two at a time), and the worker's
place is reserved right there, so no two writes of one batch can hand out the same place; the
worker becomes the holder and gets the assignment only once the write has committed, and the
place is given back if it did not (`Claim`). Two writes start tasks besides the rounds, each
saving a transaction per task and a commit's wait before the worker hears: a Submit to an agent
whose worker has a free place and whose queue holds nothing of the same priority or higher
starts the task in its own write (`start_new`), and a worker's report that ends a task takes the
next queued one for the same worker in the same write (`_take_next`).

Changes committed anywhere reach the dispatcher through the event hub: a new or requeued task
starts a round, a client message is delivered to the holder, and a task that ended while a
worker held it (cancelled, timed out, lease lost) is stopped there at once. Reports from a worker
count only while it holds the lease on that attempt; anything else is LeaseLost and changes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from agenttasks.core import lifecycle
from agenttasks.core.agents import find_agent
from agenttasks.core.errors import (
    DomainError,
    InvalidArgument,
    LeaseLost,
    PermissionDenied,
    ShuttingDown,
    StoreUnreachable,
)
from agenttasks.core.ids import check_id, new_id
from agenttasks.core.model import (
    AgentStatus,
    EventType,
    JsonObject,
    Principal,
    Progress,
    Task,
    TaskError,
    TaskEvent,
    TaskMessage,
    TaskResult,
    TaskStatus,
    utcnow,
)
from agenttasks.core.ports import Store, WriteTx, save, to_the_end
from agenttasks.core.validation import NUL_REFUSED, utf8_size
from agenttasks.core.watch import EventHub
from agenttasks.observe import tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CAPACITY = 1000
MAX_TEXT_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 256 * 1024
MAX_RESULT_BYTES = 1024 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024
SWEEP_BATCH = 500
# Queued tasks one report write reads at most at once for the places its reports free (_Queued).
QUEUED_AHEAD = 100
_HELD = (TaskStatus.RUNNING, TaskStatus.AWAITING_INPUT)


@dataclass(frozen=True, slots=True)
class Assign:
    task: Task
    messages: list[TaskMessage]
    # The dispatch span's W3C context (in the task's trace), for the worker to continue.
    trace: tracing.Trace = tracing.NO_TRACE


@dataclass(frozen=True, slots=True)
class Deliver:
    task_id: str
    attempt: int
    message: TaskMessage
    # The message answered the worker's question (the task left awaiting_input with it).
    is_reply: bool = False


@dataclass(frozen=True, slots=True)
class Stop:
    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of a worker's report: None, or the error (a DomainError, or a bug)."""

    request_id: int
    error: BaseException | None


Push = Assign | Deliver | Stop | Ack


@dataclass(frozen=True, slots=True)
class TaskRef:
    task_id: str
    attempt: int


class WorkerSession:
    """One connected worker: what it serves, how much it takes, what it holds, what to send it."""

    def __init__(self, worker_id: str, tenant: str, agent_id: str, capacity: int, name: str, now: datetime) -> None:
        self.worker_id = worker_id
        self.tenant = tenant
        self.agent_id = agent_id
        self.capacity = capacity
        self.name = name
        self.held: dict[str, int] = {}  # task_id -> attempt
        # The client messages sent to the worker, per task it holds: news of a change can reach
        # the dispatcher twice (from this server, and read back from another's), and a worker
        # must see each message once.
        self.messages_sent: dict[str, set[str]] = {}
        # The dispatch span's trace context of each traced task it holds: the parent of the spans
        # of reports that carry none of their own (workers other than the Python SDK's).
        self.traces: dict[str, tracing.Trace] = {}
        # Places taken by write functions that started tasks for this worker and have not yet
        # committed. Not in `held` until they do: news of those tasks committed before the
        # start (a Submit that queued one) may still be on its way, and must not find a holder.
        # Write functions take places and the loop gives them back; a backend may run write
        # functions on a thread of its own (PostgreSQL does), so the count moves under a lock:
        # `+= 1` on two threads can lose an update, which would shrink or swell the worker for good.
        self.reserved = 0
        self._reserving = threading.Lock()
        # What to send the worker; None ends its stream (on drain).
        self.outbox: asyncio.Queue[Push | None] = asyncio.Queue()
        self.closed = False
        # When the worker last said anything. One silent past its lease gets no new work until
        # it speaks again: it is probably stuck, and its tasks were just taken back from it.
        self.last_seen = now
        # When all its leases were last renewed (by a heartbeat, or a report that did it).
        self.leases_renewed = now

    def reserve(self, places: int) -> None:
        """Take (or, negative, give back) places for tasks started and not yet committed."""
        with self._reserving:
            self.reserved += places

    @property
    def free(self) -> int:
        # held and reserved together may exceed capacity by one per report in flight that took
        # the next task while the task it ended is still held (until its write commits).
        return 0 if self.closed else max(0, self.capacity - len(self.held) - self.reserved)


Started = tuple[Task, list[TaskEvent], WorkerSession, list[TaskMessage]]
# What a worker's report does to the task it holds: a pure transition, which may read but must
# raise (a DomainError) before anything is written, so a refused report leaves nothing behind.
Change = Callable[[WriteTx, Task, datetime], lifecycle.Transition]
Report = tuple[TaskRef, Change]
# A report applied: the task and its events, and the task it handed its place to, if any.
Applied = tuple[Task, list[TaskEvent], Started | None]


@dataclass(slots=True)
class Claim:
    """The tasks one write function started for workers. Their places were reserved when the
    function ran; once the write has committed each worker becomes the holder and gets the
    assignment, and if it did not the places are given back. Run the write through `write`,
    which does both, and publish its events after it."""

    dispatcher: Dispatcher
    started: list[Started] = field(default_factory=list)

    async def write(self, store: Store, fn: Callable[[WriteTx], T]) -> T:
        """`store.write(fn)`, then settle what `fn` started as the write went."""
        try:
            value = await store.write(fn)
        except BaseException:
            self.dispatcher._settle(self.started, committed=False)
            raise
        self.dispatcher._settle(self.started, committed=True)
        return value

    def rewind(self) -> None:
        """Give back the places of what the write function started, as it runs again after its
        first run was rolled back (ports.Rerunnable); nothing to do on a first run."""
        for _, _, session, _ in self.started:
            session.reserve(-1)
        self.started.clear()


class _Queued:
    """An agent's next queued tasks, read once for the reports of one write that end tasks:
    each such report hands its place to the next of them (on PostgreSQL a query is a round
    trip, so one per batch instead of one per report). At most as many are read as reports
    are left, up to QUEUED_AHEAD; those not taken stay queued in the store. No report queues a
    task, so what was read stays the head of the queue for the rest of the write."""

    __slots__ = ("_done", "_tasks", "left")

    def __init__(self, left: int) -> None:
        self.left = left  # reports of the write not yet applied, this one included
        self._tasks: list[Task] = []  # in reverse dispatch order: the next is last
        self._done = False  # the store has no more queued than these

    def next(self, tx: WriteTx, tenant: str, agent_id: str) -> Task | None:
        if not self._tasks and not self._done:
            want = max(1, min(self.left, QUEUED_AHEAD))
            self._tasks = tx.next_queued(tenant, agent_id, want)[::-1]
            self._done = len(self._tasks) < want
        return self._tasks.pop() if self._tasks else None


def _message(event: TaskEvent) -> TaskMessage:
    payload = event.data["message"]
    return TaskMessage(message_id=payload["message_id"], text=payload["text"], created_at=event.time)


def progress_change(percent: float, text: str) -> Change:
    """The change a progress report makes, once its fields are checked."""
    if not 0 <= percent <= 100:
        raise InvalidArgument.field("progress.percent", "must be between 0 and 100")
    if utf8_size(text) > MAX_TEXT_BYTES:
        raise InvalidArgument.field("progress.text", f"must be at most {MAX_TEXT_BYTES} bytes")
    return lambda tx, task, now: lifecycle.progress(task, Progress(percent, text), now)


def output_change(chunk: str, offset: int | None = None) -> Change:
    """Append `chunk`; with `offset` (the bytes of output the worker counts before it), a chunk
    the task already ends with, at that offset, is acknowledged without a second copy: the
    worker sent it again because it never heard whether the first one was stored."""
    size = utf8_size(chunk)
    if size > MAX_CHUNK_BYTES:
        raise InvalidArgument.field("output.chunk", f"must be at most {MAX_CHUNK_BYTES} bytes")
    if offset is not None and offset < 0:
        raise InvalidArgument.field("output.offset", "must not be negative")

    def append(tx: WriteTx, task: Task, now: datetime) -> lifecycle.Transition:
        if offset is not None and offset != task.output_bytes:
            if offset + size == task.output_bytes:
                return task, []  # stored already: the ack of the first copy was lost
            raise InvalidArgument.field(
                "output.offset", f"the task's output holds {task.output_bytes} bytes, not {offset}; a chunk is missing"
            )
        # Every GetStatus and assignment carries the output: it must stay a sane size.
        if task.output_bytes + size > MAX_OUTPUT_BYTES:
            raise InvalidArgument.field("output.chunk", f"a task keeps at most {MAX_OUTPUT_BYTES} bytes of output")
        return lifecycle.output(task, chunk, size, now)

    return append


def ask_change(prompt: str) -> Change:
    if not prompt.strip() or utf8_size(prompt) > MAX_TEXT_BYTES:
        raise InvalidArgument.field("request_input.prompt", f"required, at most {MAX_TEXT_BYTES} bytes")
    if "\x00" in prompt:
        raise InvalidArgument.field("request_input.prompt", NUL_REFUSED)

    def change(tx: WriteTx, task: Task, now: datetime) -> lifecycle.Transition:
        if task.status is not TaskStatus.RUNNING:
            raise InvalidArgument.field("request_input", "the task is already awaiting input")
        agent = find_agent(tx, task.tenant, task.agent_id)
        return lifecycle.ask_input(task, prompt, now, agent.input_timeout_seconds)

    return change


def complete_change(text: str, data: JsonObject | None) -> Change:
    if utf8_size(text) > MAX_RESULT_BYTES:
        raise InvalidArgument.field("complete.text", f"must be at most {MAX_RESULT_BYTES} bytes")
    result = TaskResult(text=text, data=data)
    return lambda tx, task, now: lifecycle.complete(task, result, now)


def fail_change(code: str, message: str) -> Change:
    code = code or lifecycle.WORKER_ERROR
    if not (code.replace("_", "").isalnum() and code.isupper() and len(code) <= 64):
        raise InvalidArgument.field("fail.code", "must be UPPER_SNAKE_CASE, at most 64 characters")
    if utf8_size(message) > MAX_TEXT_BYTES:
        raise InvalidArgument.field("fail.message", f"must be at most {MAX_TEXT_BYTES} bytes")
    error = TaskError(code=code, message=message)
    return lambda tx, task, now: lifecycle.fail(task, error, now)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._hub = hub
        self.lease = timedelta(seconds=lease_seconds)
        self._clock = clock
        self._sessions: dict[tuple[str, str], dict[str, WorkerSession]] = defaultdict(dict)
        self._holder: dict[str, WorkerSession] = {}
        self._rounds: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._again: set[tuple[str, str]] = set()
        self._closed = False
        # Tasks taken back by `expire_leases` since start (metrics read it).
        self.leases_expired = 0
        hub.listen(self._on_change)

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease.total_seconds() / 3

    # --- connections ---

    async def connect(self, principal: Principal, agent_id: str, capacity: int, name: str = "") -> WorkerSession:
        agent_id = check_id(agent_id, "hello.agent_id")
        if principal.agent_id and principal.agent_id != agent_id:
            raise PermissionDenied(f"this credential serves agent {principal.agent_id} only, not {agent_id}")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise InvalidArgument.field("hello.capacity", f"must be between 1 and {MAX_CAPACITY}")
        if len(name) > 200:
            raise InvalidArgument.field("hello.worker_name", "must be at most 200 characters")
        await self._store.read(lambda tx: find_agent(tx, principal.tenant, agent_id))
        if self._closed:  # the drain began while we looked the agent up
            raise ShuttingDown("server is shutting down; reconnect shortly")
        session = WorkerSession(new_id(), principal.tenant, agent_id, capacity, name, self._clock())
        self._sessions[(session.tenant, agent_id)][session.worker_id] = session
        log.info("worker %s (%s) connected to agent %s, capacity %d", session.worker_id, name, agent_id, capacity)
        self.poke(session.tenant, agent_id)
        return session

    async def disconnect(self, session: WorkerSession) -> None:
        """The connection ended: the worker's leases are lost at once and its tasks go back."""
        if session.closed:
            return
        session.closed = True
        agents = self._sessions.get((session.tenant, session.agent_id), {})
        agents.pop(session.worker_id, None)
        log.info("worker %s disconnected holding %d tasks", session.worker_id, len(session.held))
        await self._take_back(lambda tx, now: tx.worker_tasks(session.worker_id))

    def workers(self, tenant: str, agent_id: str) -> list[WorkerSession]:
        return list(self._sessions.get((tenant, agent_id), {}).values())

    def holds(self, task_id: str) -> bool:
        """Whether a worker connected here holds the task."""
        return task_id in self._holder

    def held(self) -> list[tuple[str, str, str]]:
        """(tenant, agent_id, task_id) of every task a worker connected here holds."""
        return [(s.tenant, s.agent_id, task_id) for task_id, s in self._holder.items()]

    def served(self) -> list[tuple[str, str]]:
        """(tenant, agent_id) of every agent with a worker connected here."""
        return [key for key, sessions in self._sessions.items() if sessions]

    # --- dispatch rounds ---

    def poke(self, tenant: str, agent_id: str) -> None:
        """Ask for a dispatch round for the agent (coalesced with one already running)."""
        key = (tenant, agent_id)
        if not self._sessions.get(key):
            return
        if key in self._rounds:
            self._again.add(key)
            return
        self._rounds[key] = asyncio.create_task(self._rounds_for(key), name=f"dispatch-{agent_id}")

    async def _rounds_for(self, key: tuple[str, str]) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._round(*key)
                except StoreUnreachable:  # said once by the store; it pokes again once back
                    pass
                except Exception:  # a failed round must not stop later ones; the next poke retries
                    log.exception("dispatch round for agent %s failed", key[1])
                if key not in self._again:
                    return
        finally:
            del self._rounds[key]

    def _heard_from(self, session: WorkerSession, now: datetime) -> None:
        silent = now - session.last_seen > self.lease
        session.last_seen = now
        if silent:
            self.poke(session.tenant, session.agent_id)

    def _alive(self, tenant: str, agent_id: str, now: datetime) -> list[WorkerSession]:
        return [s for s in self.workers(tenant, agent_id) if not s.closed and now - s.last_seen <= self.lease]

    def _slots(self, tenant: str, agent_id: str, now: datetime) -> list[WorkerSession]:
        """One entry per free place of the agent's live workers, spread round-robin so that
        work goes to the least busy first."""
        alive = self._alive(tenant, agent_id, now)
        free = {s.worker_id: s.free for s in alive}
        sessions = sorted(alive, key=lambda s: free[s.worker_id], reverse=True)
        slots: list[WorkerSession] = []
        while any(free.values()):
            for s in sessions:
                if free[s.worker_id] > 0:
                    slots.append(s)
                    free[s.worker_id] -= 1
        return slots

    def _start(self, tx: WriteTx, claim: Claim, task: Task, session: WorkerSession, now: datetime) -> Started:
        """Start `task` (queued, or new) for `session`, reserving its place (see Claim)."""
        # A task whose only event is its creation has no messages: skip the query.
        messages = (
            [_message(e) for e in tx.events_of_type(task.tenant, task.task_id, EventType.MESSAGE)]
            if task.last_sequence > 1
            else []
        )
        started, events = lifecycle.start(task, now, worker_id=session.worker_id, lease_until=now + self.lease)
        session.reserve(1)
        entry = (started, events, session, messages)
        claim.started.append(entry)
        return entry

    def _settle(self, started: list[Started], committed: bool) -> None:
        for task, _, session, messages in started:
            session.reserve(-1)
            if not committed:
                # Still queued in the store: a round may have passed it over for this place.
                self.poke(session.tenant, session.agent_id)
            elif not session.closed:
                session.held[task.task_id] = task.attempt
                session.messages_sent[task.task_id] = {m.message_id for m in messages}
                self._holder[task.task_id] = session
                trace = (task.traceparent, task.tracestate)
                if trace[0]:  # a traced task: its dispatch span, which the worker continues
                    attributes: tracing.Attributes = {
                        "agenttasks.task_id": task.task_id,
                        "agenttasks.attempt": task.attempt,
                        "agenttasks.worker_id": session.worker_id,
                    }
                    trace = tracing.record(trace, "agenttasks.dispatch", attributes, start_time=task.started_at)
                    session.traces[task.task_id] = trace
                session.outbox.put_nowait(Assign(task, messages, trace))
            # Else its worker left meanwhile: that disconnect's take-back write came after this
            # one, so it finds the task and requeues it.

    def claim(self) -> Claim:
        return Claim(self)

    def start_new(self, tx: WriteTx, claim: Claim, task: Task, now: datetime) -> tuple[Task, list[TaskEvent]] | None:
        """In a Submit's write function: start the new task (not yet inserted) for the agent's
        least busy live worker, if one has a free place; None if none has. The caller checks
        that nothing queued for the agent comes before it."""
        if self._closed:
            return None
        # The first of the round's slots, without listing them all on every Submit.
        least_busy = max(self._alive(task.tenant, task.agent_id, now), key=lambda s: s.free, default=None)
        if least_busy is None or least_busy.free == 0:
            return None
        started, events, _, _ = self._start(tx, claim, task, least_busy, now)
        return started, events

    def _take_next(
        self, tx: WriteTx, claim: Claim, session: WorkerSession, now: datetime, queued: _Queued
    ) -> Started | None:
        """In the write of a report that ended a task: the next queued task of the agent, for the
        same worker, whose place that task frees. None if there is none or it cannot take it."""
        if self._closed or session.closed:
            return None
        agent = tx.get_agent(session.tenant, session.agent_id)
        if agent is None or agent.status is not AgentStatus.ACTIVE:
            return None
        task = queued.next(tx, session.tenant, session.agent_id)
        if task is None:
            return None
        entry = self._start(tx, claim, task, session, now)
        save(tx, (entry[0], entry[1]))
        return entry

    async def _round(self, tenant: str, agent_id: str) -> None:
        now = self._clock()
        if not self._slots(tenant, agent_id, now):
            return
        claim = self.claim()

        def run(tx: WriteTx) -> None:
            if self._closed:  # the drain began after this round queued its write
                return
            agent = tx.get_agent(tenant, agent_id)
            if agent is None or agent.status is not AgentStatus.ACTIVE:
                return
            slots = self._slots(tenant, agent_id, now)  # as they are now, with this batch's claims
            for task, session in zip(tx.next_queued(tenant, agent_id, len(slots)), slots, strict=False):
                started, events, _, _ = self._start(tx, claim, task, session, now)
                save(tx, (started, events))

        await claim.write(self._store, run)
        for task, events, _, _ in claim.started:
            self._hub.publish(task, events)

    # --- what committed changes mean for workers ---

    def _on_change(self, task: Task, events: list[TaskEvent]) -> None:
        holder = self._holder.get(task.task_id)
        if holder is not None:
            attempt = holder.held.get(task.task_id, task.attempt)
            if task.worker_id != holder.worker_id:
                # Ended or requeued by someone other than the holder: stop it there now.
                self._release(task.task_id)
                holder.outbox.put_nowait(Stop(task.task_id, attempt, task.status_reason or task.status.value))
                self.poke(holder.tenant, holder.agent_id)
            else:
                sent = holder.messages_sent.setdefault(task.task_id, set())
                for i, event in enumerate(events):
                    if event.type is EventType.MESSAGE:
                        message = _message(event)
                        if message.message_id in sent:
                            continue
                        sent.add(message.message_id)
                        answered = events[i + 1 : i + 2]
                        is_reply = bool(answered) and answered[0].data.get("reason") == lifecycle.INPUT_RECEIVED
                        holder.outbox.put_nowait(Deliver(task.task_id, attempt, message, is_reply))
        if task.status is TaskStatus.QUEUED and any(e.type in (EventType.CREATED, EventType.STATUS) for e in events):
            self.poke(task.tenant, task.agent_id)

    def _release(self, task_id: str) -> WorkerSession | None:
        holder = self._holder.pop(task_id, None)
        if holder is not None:
            holder.held.pop(task_id, None)
            holder.messages_sent.pop(task_id, None)
            holder.traces.pop(task_id, None)
        return holder

    # --- reports from the holder ---

    async def report(self, session: WorkerSession, reports: Sequence[Report]) -> list[DomainError | None]:
        """Apply a worker's reports in one write, in order, each with its own outcome: None, or
        the DomainError that refused it and left it unwritten (LeaseLost for a task the worker
        no longer holds). Any other error fails them all. A report that ends a task hands its
        place to the next queued task in the same write."""
        now = self._clock()
        self._heard_from(session, now)
        # Any report keeps all the worker's leases alive, as a heartbeat does; renewing them on
        # every report would cost an update of every held row, so at most every third of a lease.
        renew_all = now - session.leases_renewed > self.lease / 3
        # Only what this server told the worker it holds (see renew_leases).
        held = list(session.held) if renew_all else []
        if renew_all:
            session.leases_renewed = now

        claim = self.claim()

        def apply(tx: WriteTx, ref: TaskRef, change: Change, queued: _Queued) -> Applied:
            task = tx.get_task(session.tenant, ref.task_id)
            if (
                task is None
                or task.worker_id != session.worker_id
                or task.attempt != ref.attempt
                or task.status not in _HELD
            ):
                raise LeaseLost(
                    f"task {ref.task_id} attempt {ref.attempt} is not leased to this worker; the report was ignored",
                    metadata={"task_id": ref.task_id},
                )
            task, events = change(tx, task, now)  # raises before it writes anything
            if task.worker_id:  # any report from the holder keeps its lease alive
                task = replace(task, lease_expires_at=now + self.lease)
            task, events = save(tx, (task, events))
            # The holder ended it: its place goes to the next queued task in this same write.
            following = None if task.worker_id else self._take_next(tx, claim, session, now, queued)
            return task, events, following

        def op(tx: WriteTx) -> list[Applied | DomainError]:
            if renew_all:
                tx.renew_leases(session.worker_id, now + self.lease, held)
            tx.prefetch_tasks(session.tenant, [ref.task_id for ref, _ in reports])
            queued = _Queued(len(reports))
            outcomes: list[Applied | DomainError] = []
            for ref, change in reports:
                try:
                    outcomes.append(apply(tx, ref, change, queued))
                except DomainError as refused:
                    outcomes.append(refused)
                queued.left -= 1
            return outcomes

        async def write_then_publish() -> list[DomainError | None]:
            outcomes = await claim.write(self._store, op)
            errors: list[DomainError | None] = []
            for (ref, _), outcome in zip(reports, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    errors.append(outcome)
                    # The store says this attempt is not the worker's: if our map still thought
                    # it was, free the place, or the worker's capacity would shrink for good.
                    if (
                        isinstance(outcome, LeaseLost)
                        and self._holder.get(ref.task_id) is session
                        and session.held.get(ref.task_id) == ref.attempt
                    ):
                        self._release(ref.task_id)
                        self.poke(session.tenant, session.agent_id)
                    continue
                errors.append(None)
                task, events, following = outcome
                if not task.worker_id:
                    # The holder finished it itself: no stop to send. Its place went to the next
                    # queued task if there was one; a task queued since then was published after
                    # this release and pokes a round itself, so no round is needed here.
                    self._release(task.task_id)
                self._hub.publish(task, events)
                if following is not None:
                    self._hub.publish(following[0], following[1])
            return errors

        return await to_the_end(write_then_publish())

    async def report_one(self, session: WorkerSession, ref: TaskRef, change: Change) -> None:
        """`report` of one report; raises its error."""
        (error,) = await self.report(session, [(ref, change)])
        if error is not None:
            raise error

    async def heartbeat(self, session: WorkerSession) -> None:
        now = self._clock()
        self._heard_from(session, now)
        until = now + self.lease
        session.leases_renewed = now
        held = list(session.held)  # what this server told the worker it holds (see renew_leases)
        await self._store.write(lambda tx: tx.renew_leases(session.worker_id, until, held))

    # --- sweeps ---

    async def _sweep(
        self,
        select: Callable[[WriteTx, datetime], list[Task]],
        change: Callable[[WriteTx, Task, datetime], lifecycle.Transition],
    ) -> int:
        """Apply `change` to every selected task in one write, then tell watchers and holders."""
        now = self._clock()

        async def write_then_publish() -> int:
            changes = await self._store.write(lambda tx: [save(tx, change(tx, t, now)) for t in select(tx, now)])
            for task, events in changes:
                self._hub.publish(task, events)  # the listener stops each at a holder still connected
            return len(changes)

        return await to_the_end(write_then_publish())

    async def _take_back(self, select: Callable[[WriteTx, datetime], list[Task]]) -> int:
        """Lose the leases of the selected tasks: requeue them, or fail them with their attempts spent."""

        def lose(tx: WriteTx, task: Task, now: datetime) -> lifecycle.Transition:
            agent = tx.get_agent(task.tenant, task.agent_id)
            return lifecycle.lose_lease(task, now, agent.max_attempts if agent else 1)

        return await self._sweep(select, lose)

    async def expire_leases(self) -> int:
        """Take back tasks whose worker went silent past its lease."""
        now = self._clock()
        if not await self._store.read(lambda tx: tx.expired_leases(now, 1)):
            return 0
        taken = await self._take_back(lambda tx, now: tx.expired_leases(now, SWEEP_BATCH))
        self.leases_expired += taken
        return taken

    async def enforce_deadlines(self) -> int:
        """Fail tasks that ran (or awaited input) too long; the listener tells their workers."""
        now = self._clock()
        if not await self._store.read(lambda tx: tx.overdue_tasks(now, 1)):
            return 0
        return await self._sweep(
            lambda tx, now: tx.overdue_tasks(now, SWEEP_BATCH), lambda tx, task, now: lifecycle.expire(task, now)
        )

    async def close(self) -> None:
        """Stop dispatching and end every worker stream (on drain), so the server need not wait
        out its grace period for streams that never end by themselves. Each ended connection
        gives its tasks back as usual; workers reconnect to another replica or after restart."""
        self._closed = True
        for task in list(self._rounds.values()):
            task.cancel()
        for sessions in self._sessions.values():
            for session in sessions.values():
                session.outbox.put_nowait(None)
        self._sessions.clear()
