"""The task API, transport-neutral: what Submit, GetStatus, SendMessage, Cancel, ListTasks and
WatchTask mean. The gRPC servicer only translates messages to and from these calls.

Every change is one `store.write` of a pure function: read, check, transition, store task and
events together. Events are handed to the watch hub only after the commit, so a watcher never
sees anything the store could still lose.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agenttasks.core import idempotency, lifecycle, validation
from agenttasks.core.agents import find_agent
from agenttasks.core.errors import (
    AgentUnavailable,
    InvalidArgument,
    TaskNotFound,
    TooManyQueued,
    TooManyWatches,
    Why,
)

# ANY_AGENT: the AIP-159 wildcard, a task addressed without knowing its agent. MAX_BATCH: one
# write holds a whole BatchSubmit, and other writes wait behind it.
from agenttasks.core.field_rules import ANY_AGENT, MAX_BATCH
from agenttasks.core.ids import check_id, new_id
from agenttasks.core.model import (
    Agent,
    AgentStatus,
    CallbackMode,
    JsonObject,
    Principal,
    Task,
    TaskEvent,
    TaskMessage,
    TaskStatus,
    WebhookDelivery,
    utcnow,
)
from agenttasks.core.paging import PageTokens
from agenttasks.core.ports import ReadTx, Rerunnable, Store, WriteTx, save, to_the_end, with_output
from agenttasks.core.watch import EventHub, WatchItem, follow
from agenttasks.observe import tracing

if TYPE_CHECKING:
    from agenttasks.core.dispatch import Claim, Dispatcher

# Without run history, assume a task takes this long when estimating start times.
DEFAULT_RUN_SECONDS = 60.0
RUN_HISTORY = 50
# Recent run times change slowly; reading them on every Submit cost a query each time.
RUN_ESTIMATE_TTL_SECONDS = 5.0
# The cap on queued tasks per tenant counts from the store at most this often; in between, a
# server adds the tasks it queued itself. Tasks started in between still count, so the estimate
# only errs high, and an estimate at the cap is counted again before a Submit is refused.
QUEUED_RECOUNT_SECONDS = 1.0
# How stale a count at or over the cap may be when it refuses a Submit: a tenant flooding past its
# cap costs the store one count per this interval, not one per refused call.
QUEUED_RECHECK_SECONDS = 0.05
EVENT_PAGE = 500
# A page of ListTasks holds tasks of at most about this many bytes, whatever its page_size: a
# task may carry 1 MiB of output and 1 MiB of result, and gRPC clients refuse messages over
# 4 MiB by default. A page that stops short has a next_page_token, as AIP-158 allows.
MAX_PAGE_BYTES = 3 * 1024 * 1024
LIST_READ_ROWS = 50
# A task a write changed and the events it stored for it, to publish once committed.
Changed = tuple[Task, list[TaskEvent]]


@dataclass(frozen=True, slots=True)
class SubmitInput:
    """One Submit request as the client sent it, before validation."""

    message: str
    priority: int | None = None
    timeout_override: int | None = None
    metadata: JsonObject | None = None
    callback_mode: str = ""
    webhook_url: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class _NewTask:
    """A validated Submit and the id its task gets if it is not a replay."""

    spec: validation.SubmitSpec
    digest: str
    task_id: str
    # The Submit's span context (its RPC span's), kept with the task.
    trace: tracing.Trace = tracing.NO_TRACE


@dataclass(frozen=True, slots=True)
class SubmitResult:
    task_id: str
    agent_id: str
    status: TaskStatus
    created_at: datetime
    estimated_start: datetime
    poll_url: str
    cancel_url: str

    def to_json(self) -> JsonObject:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["estimated_start"] = self.estimated_start.isoformat()
        return data

    @classmethod
    def from_json(cls, data: JsonObject) -> SubmitResult:
        return cls(
            task_id=data["task_id"],
            agent_id=data["agent_id"],
            status=TaskStatus(data["status"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            estimated_start=datetime.fromisoformat(data["estimated_start"]),
            poll_url=data["poll_url"],
            cancel_url=data["cancel_url"],
        )


@dataclass(frozen=True, slots=True)
class MessageResult:
    task_id: str
    message_id: str
    status: TaskStatus
    created_at: datetime

    def to_json(self) -> JsonObject:
        return {**asdict(self), "created_at": self.created_at.isoformat()}

    @classmethod
    def from_json(cls, data: JsonObject) -> MessageResult:
        return cls(
            task_id=data["task_id"],
            message_id=data["message_id"],
            status=TaskStatus(data["status"]),
            created_at=datetime.fromisoformat(data["created_at"]),
        )


def find_task(tx: ReadTx, tenant: str, agent_id: str, task_id: str) -> Task:
    """The task, if it exists in this tenant under this agent (or any agent for the AIP-159
    wildcard "-"); otherwise exactly TaskNotFound."""
    task = tx.get_task(tenant, task_id)
    if task is None or agent_id not in (task.agent_id, ANY_AGENT):
        raise TaskNotFound(task_id)
    return task


def _encoded_size(task: Task) -> int:
    """About the task's size as a message: its texts, its JSON objects twice over (a Struct
    takes more bytes than its JSON, up to ~1.1x for lists of numbers), and a kilobyte for the
    rest. Close enough for MAX_PAGE_BYTES, which stays well under the 4 MiB clients accept."""
    texts = [task.message, task.input_prompt, task.webhook_url]
    if task.progress is not None:
        texts.append(task.progress.text)
    if task.error is not None:
        texts += [task.error.code, task.error.message]
    objects: list[Any] = [task.metadata]
    if task.result is not None:
        texts.append(task.result.text)
        objects.append(task.result.data)
    return (
        task.output_bytes
        + sum(map(validation.utf8_size, texts))
        + sum(2 * validation.utf8_size(json.dumps(o)) for o in objects if o)
        + 1024
    )


def check_parent(agent_id: str) -> str:
    """The agent id of a task path: a UUID, or "-" for any agent of the tenant (AIP-159)."""
    return ANY_AGENT if agent_id == ANY_AGENT else check_id(agent_id, "agent_id")


class TaskCore:
    """Task operations for authenticated principals."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        limits: validation.Limits,
        base_url: str,
        page_tokens: PageTokens,
        idempotency_ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = utcnow,
        check_webhook_url: Callable[[str], str | None] = lambda url: None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._limits = limits
        self.base_url = base_url
        self._tokens = page_tokens
        self._ttl = idempotency_ttl
        self._clock = clock
        # Why a webhook_url must be refused at once (a literal private address...), or None.
        self._check_webhook_url = check_webhook_url
        self._run_estimates: dict[tuple[str, str], tuple[float, float]] = {}
        # Per tenant: [when counted (time.monotonic()), queued tasks then plus those queued since].
        self._queued: dict[str, list[float]] = {}
        # Open watch streams per credential (subject), for Limits.max_watches_per_credential.
        self._watching: Counter[str] = Counter()
        # Set once the dispatcher exists: a Submit then starts its task at once for a worker
        # with a free place, in the same write (see Dispatcher.start_new).
        self.dispatcher: Dispatcher | None = None

    @property
    def base_url(self) -> str:
        """Where clients reach the REST API, for poll_url and cancel_url in Submit answers."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        # Settable: with port 0 the REST address is known only once the gateway listens.
        self._base_url = value.rstrip("/")

    def _run_seconds(self, tx: ReadTx, tenant: str, agent_id: str) -> float:
        """The agent's recent mean running time, re-read at most every few seconds. Called
        from write functions; a racing refresh would just read the same value twice."""
        key = (tenant, agent_id)
        cached = self._run_estimates.get(key)
        now = time.monotonic()
        if cached is None or cached[0] < now:
            value = tx.recent_run_seconds(tenant, agent_id, RUN_HISTORY) or DEFAULT_RUN_SECONDS
            if len(self._run_estimates) > 10_000:  # bounded: forget everything rather than grow
                self._run_estimates.clear()
            cached = self._run_estimates[key] = (now + RUN_ESTIMATE_TTL_SECONDS, value)
        return cached[1]

    def _take_queue_place(self, tx: WriteTx, tenant: str) -> None:
        """Count one more queued task for the tenant, or refuse it at Limits.max_queued_per_tenant.
        Called from write functions. Across replicas the count is the store's, so the cap holds
        for the whole service, give or take what other servers queued in the last recount."""
        cap = self._limits.max_queued_per_tenant
        if cap <= 0:
            return
        now = time.monotonic()
        entry = self._queued.get(tenant)
        if (
            entry is None
            or now - entry[0] > QUEUED_RECOUNT_SECONDS
            or (entry[1] >= cap and now - entry[0] > QUEUED_RECHECK_SECONDS)
        ):
            if len(self._queued) > 10_000:  # bounded: forget everything rather than grow
                self._queued.clear()
            entry = self._queued[tenant] = [now, float(tx.queued_in_tenant(tenant))]
        if entry[1] >= cap:
            raise TooManyQueued(cap)
        entry[1] += 1

    def _urls(self, agent_id: str, task_id: str) -> tuple[str, str]:
        base = f"{self._base_url}/agent/{agent_id}/task/{task_id}"
        return base, f"{base}/cancel"

    async def _commit(self, fn: Callable[[WriteTx], tuple[Any, list[Changed]]], claim: Claim | None = None) -> Any:
        """Write, then publish each changed task's events; with a `claim`, the tasks `fn` started
        are assigned in between, so a worker hears of its task before any later change to it is
        published."""

        async def write_then_publish() -> Any:
            write = self._store.write(fn) if claim is None else claim.write(self._store, fn)
            result, changes = await write
            for task, events in changes:
                self._hub.publish(task, events)
            return result

        return await to_the_end(write_then_publish())

    def _prepare(self, agent_id: str, item: SubmitInput) -> _NewTask:
        """Validate one Submit outside the write; raises InvalidArgument naming every bad field."""
        spec = validation.validate_submit(
            message=item.message,
            priority=item.priority,
            timeout_override=item.timeout_override,
            metadata=item.metadata,
            callback_mode=item.callback_mode,
            webhook_url=item.webhook_url,
            request_id=item.request_id,
            limits=self._limits,
        )
        if spec.webhook_url and (refused := self._check_webhook_url(spec.webhook_url)) is not None:
            raise InvalidArgument.field("webhook_url", refused, Why.NOT_ALLOWED_VALUE)
        digest = spec.request_id and idempotency.request_hash(  # only keyed requests need one
            {
                "agent_id": agent_id,
                "message": spec.message,
                "priority": spec.priority,
                "timeout_override": spec.timeout_override,
                "metadata": spec.metadata,
                "callback_mode": spec.callback_mode.value,
                "webhook_url": spec.webhook_url,
            }
        )
        return _NewTask(spec, digest, new_id(), tracing.current())

    def _create(
        self,
        tx: WriteTx,
        tenant: str,
        agent_id: str,
        new: _NewTask,
        agent: Callable[[], Agent],
        claim: Claim | None,
        now: datetime,
    ) -> tuple[SubmitResult, list[Changed]]:
        """In a write: the stored answer of a replayed key, or the new task inserted, started at
        once for a worker with a free place when nothing queued comes before it."""
        spec = new.spec
        if (stored := idempotency.replay(tx, tenant, "submit", spec.request_id, new.digest)) is not None:
            return SubmitResult.from_json(stored), []
        self._take_queue_place(tx, tenant)
        default_timeout = agent().default_timeout_seconds  # also: the agent takes new tasks
        task = Task(
            tenant=tenant,
            task_id=new.task_id,
            agent_id=agent_id,
            message=spec.message,
            priority=spec.priority,
            metadata=spec.metadata,
            callback_mode=spec.callback_mode,
            webhook_url=spec.webhook_url,
            timeout_seconds=spec.timeout_override or default_timeout,
            created_at=now,
            updated_at=now,
            traceparent=new.trace[0],
            tracestate=new.trace[1],
        )
        task, events = lifecycle.created(task)
        ahead = tx.queued_at_or_above(tenant, agent_id, task.priority)
        estimated_start = now
        started = None
        if ahead == 0 and claim is not None:
            started = claim.dispatcher.start_new(tx, claim, task, now)
        if started is not None:
            task, events = started[0], events + started[1]
        else:
            estimated_start = now + timedelta(seconds=ahead * self._run_seconds(tx, tenant, agent_id))
        task = tx.insert_task(task)
        for event in events:
            tx.append_event(event)
        poll_url, cancel_url = self._urls(agent_id, task.task_id)
        result = SubmitResult(
            task_id=task.task_id,
            agent_id=agent_id,
            # As accepted (the contract's answer), even if it started in this same write.
            status=TaskStatus.QUEUED,
            created_at=now,
            estimated_start=estimated_start,
            poll_url=poll_url,
            cancel_url=cancel_url,
        )
        if spec.request_id:
            idempotency.remember(tx, tenant, "submit", spec.request_id, new.digest, result.to_json(), now, self._ttl)
        return result, [(task, events)]

    def _agent_once(self, tx: WriteTx, tenant: str, agent_id: str) -> Callable[[], Agent]:
        """The agent that takes new tasks, looked up on first need (a batch of replays needs
        none, and a replay is answered even if the agent has since been paused)."""
        found: list[Agent] = []

        def agent() -> Agent:
            if not found:
                current = find_agent(tx, tenant, agent_id)
                if current.status is not AgentStatus.ACTIVE:
                    raise AgentUnavailable(agent_id, current.status.value)
                found.append(current)
            return found[0]

        return agent

    async def submit(self, principal: Principal, agent_id: str, item: SubmitInput) -> SubmitResult:
        agent_id = check_id(agent_id, "agent_id")
        new = self._prepare(agent_id, item)
        tenant = principal.tenant
        now = self._clock()
        claim = self.dispatcher.claim() if self.dispatcher is not None else None

        def op(tx: WriteTx) -> tuple[SubmitResult, list[Changed]]:
            # Run again after a rollback (Rerunnable): the worker place its first run took is
            # given back first. The tenant's queued count (_take_queue_place) may then count
            # the task twice until its next recount; it is an estimate between recounts anyway.
            if claim is not None:
                claim.rewind()
            return self._create(tx, tenant, agent_id, new, self._agent_once(tx, tenant, agent_id), claim, now)

        # A span per Submit, from queueing its write to the durable commit of the group it went in.
        with tracing.span("agenttasks.store.write", {"agenttasks.task_id": new.task_id}):
            result: SubmitResult = await self._commit(Rerunnable(op), claim)
        return result

    async def submit_batch(
        self, principal: Principal, agent_id: str, items: Sequence[SubmitInput]
    ) -> list[SubmitResult]:
        """Submit each item, all in one write: all are queued or none is. A bad item fails the
        batch with its fields named `requests[i].field`. Items start, and queue, as if submitted
        one by one from the highest priority down."""
        agent_id = check_id(agent_id, "agent_id")
        if not items:
            raise InvalidArgument.field("requests", "must hold at least one request", Why.REQUIRED)
        if len(items) > MAX_BATCH:
            raise InvalidArgument.field(
                "requests", f"must hold at most {MAX_BATCH} requests, got {len(items)}", Why.TOO_LONG
            )
        news = []
        for i, item in enumerate(items):
            try:
                news.append(self._prepare(agent_id, item))
            except InvalidArgument as error:
                raise error.within(f"requests[{i}].") from None
        tenant = principal.tenant
        now = self._clock()
        claim = self.dispatcher.claim() if self.dispatcher is not None else None

        # Created in dispatch order (highest priority first, request order within one), so free
        # places go to the highest priorities and each estimate counts the tasks queued ahead;
        # the answers stay in request order.
        order = sorted(range(len(news)), key=lambda i: -news[i].spec.priority)

        def op(tx: WriteTx) -> tuple[list[SubmitResult], list[Changed]]:
            agent = self._agent_once(tx, tenant, agent_id)
            results: dict[int, SubmitResult] = {}
            changes: list[Changed] = []
            for i in order:
                results[i], changed = self._create(tx, tenant, agent_id, news[i], agent, claim, now)
                changes += changed
            return [results[i] for i in range(len(news))], changes

        with tracing.span("agenttasks.store.write", {"agenttasks.tasks": len(news)}):
            results: list[SubmitResult] = await self._commit(op, claim)
        return results

    async def get(self, principal: Principal, agent_id: str, task_id: str) -> Task:
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        return await self._store.read(lambda tx: find_task(tx, principal.tenant, agent_id, task_id))

    async def status(self, principal: Principal, agent_id: str, task_id: str) -> tuple[Task, list[WebhookDelivery]]:
        """The task and, for a webhook task, its delivery log (one consistent read)."""
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        tenant = principal.tenant

        def op(tx: ReadTx) -> tuple[Task, list[WebhookDelivery]]:
            task = with_output(tx, find_task(tx, tenant, agent_id, task_id))
            deliveries = tx.task_deliveries(tenant, task_id) if task.callback_mode is CallbackMode.WEBHOOK else []
            return task, deliveries

        return await self._store.read(op)

    async def send_message(
        self, principal: Principal, agent_id: str, task_id: str, message: str, request_id: str = ""
    ) -> MessageResult:
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        validation.validate_message(message, request_id, self._limits)
        tenant = principal.tenant
        digest = request_id and idempotency.request_hash({"task_id": task_id, "message": message})
        now = self._clock()
        msg = TaskMessage(message_id=new_id(), text=message, created_at=now)

        def op(tx: WriteTx) -> tuple[MessageResult, list[Changed]]:
            if (stored := idempotency.replay(tx, tenant, "message", request_id, digest)) is not None:
                return MessageResult.from_json(stored), []
            task = find_task(tx, tenant, agent_id, task_id)
            task, events = save(tx, lifecycle.add_message(task, msg, now))
            result = MessageResult(task_id=task_id, message_id=msg.message_id, status=task.status, created_at=now)
            if request_id:
                idempotency.remember(tx, tenant, "message", request_id, digest, result.to_json(), now, self._ttl)
            return result, [(task, events)]

        result: MessageResult = await self._commit(op)
        return result

    async def cancel(self, principal: Principal, agent_id: str, task_id: str) -> Task:
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        tenant = principal.tenant
        now = self._clock()

        def op(tx: WriteTx) -> tuple[Task, list[Changed]]:
            task, events = save(tx, lifecycle.cancel(find_task(tx, tenant, agent_id, task_id), now))
            return with_output(tx, task), [(task, events)]

        task: Task = await self._commit(op)
        return task

    async def list(
        self, principal: Principal, agent_id: str, *, status: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Task], str]:
        """A page of the agent's tasks, newest first, and the token of the next page ("" at the end)."""
        agent_id = check_id(agent_id, "agent_id")
        wanted = validation.validate_status_filter(status)
        limit = validation.validate_page_size(page_size)
        tenant = principal.tenant
        query = {"tenant": tenant, "agent_id": agent_id, "status": status, "kind": "tasks"}
        before = int(self._tokens.decode(page_token, query)[0]) if page_token else None

        def op(tx: ReadTx) -> tuple[list[Task], bool]:
            """The page, and whether more tasks follow it. Rows are read a few at a time, so a
            page that stops early for size has not read hundreds of big rows for nothing."""
            find_agent(tx, tenant, agent_id)
            page: list[Task] = []
            size, cursor = 0, before
            while True:
                want = min(limit + 1 - len(page), LIST_READ_ROWS)
                rows = tx.list_tasks(tenant, agent_id, status=wanted, before_seq=cursor, limit=want)
                for task in rows:
                    size += _encoded_size(task)
                    if len(page) == limit or (page and size > MAX_PAGE_BYTES):
                        return page, True
                    page.append(with_output(tx, task))
                if len(rows) < want:
                    return page, False
                cursor = rows[-1].seq

        page, more = await self._store.read(op)
        return page, self._tokens.encode(query, [page[-1].seq]) if more else ""

    async def watch(
        self, principal: Principal, agent_id: str, task_id: str, after_sequence: int = 0
    ) -> AsyncIterator[WatchItem]:
        """Snapshot, missed events after `after_sequence`, live events, then an end marker."""
        agent_id, task_id = check_parent(agent_id), check_id(task_id, "task_id")
        if after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative", Why.OUT_OF_RANGE)
        tenant = principal.tenant
        cap, who = self._limits.max_watches_per_credential, principal.subject
        if cap and self._watching[who] >= cap:
            raise TooManyWatches(cap)
        self._watching[who] += 1
        sub = self._hub.subscribe(task_id)  # before the snapshot, so no event falls in between
        try:
            task = self._hub.latest(task_id)
            if task is None or task.tenant != tenant or agent_id not in (task.agent_id, ANY_AGENT) or task.output_bytes:
                # Not remembered (or another tenant's: the store answers exactly TaskNotFound),
                # or with output to read.
                task = await self._store.read(lambda tx: with_output(tx, find_task(tx, tenant, agent_id, task_id)))

            async def fetch_after(seq: int) -> list[TaskEvent]:
                return await self._store.read(lambda tx: tx.events_after(tenant, task_id, seq, EVENT_PAGE))

            async for item in follow(sub, task, after_sequence, fetch_after):
                yield item
        finally:
            sub.close()
            if (left := self._watching[who] - 1) > 0:
                self._watching[who] = left
            else:
                del self._watching[who]
