"""The agent lifecycle API, transport-neutral: create, read, update, delete, and status changes.

Pausing keeps the queue and dispatches nothing; stopping or an error status also refuses new
submits. Deleting an agent cancels its unfinished tasks first, so their watchers and webhooks
learn the outcome instead of seeing the task vanish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from agenttasks.core import lifecycle, validation
from agenttasks.core.errors import AgentNotFound
from agenttasks.core.ids import check_id, new_id
from agenttasks.core.model import Agent, AgentStatus, JsonObject, Principal, Task, TaskEvent, utcnow
from agenttasks.core.paging import PageTokens
from agenttasks.core.ports import ReadTx, Store, WriteTx, in_bounded_writes, save, to_the_end
from agenttasks.core.watch import EventHub

# Finished tasks deleted per write when an agent is deleted (20,000 with their events took 0.33 s
# in one write on this machine kind).
DELETE_BATCH = 1_000


def find_agent(tx: ReadTx, tenant: str, agent_id: str) -> Agent:
    agent = tx.get_agent(tenant, agent_id)
    if agent is None:
        raise AgentNotFound(agent_id)
    return agent


class AgentCore:
    """Agent operations for authenticated principals."""

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        limits: validation.Limits,
        page_tokens: PageTokens,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._hub = hub
        self._limits = limits
        self._tokens = page_tokens
        self._clock = clock
        # Called with (tenant, agent_id) after an agent's status changed, so dispatch can react.
        self.on_status_change: Callable[[str, str], None] = lambda tenant, agent_id: None

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        description: str = "",
        default_timeout_seconds: int | None = None,
        max_attempts: int | None = None,
        input_timeout_seconds: int | None = None,
        metadata: JsonObject | None = None,
    ) -> Agent:
        validation.validate_agent_fields(
            name=name,
            description=description,
            default_timeout_seconds=default_timeout_seconds,
            max_attempts=max_attempts,
            input_timeout_seconds=input_timeout_seconds,
            metadata=metadata,
            limits=self._limits,
            creating=True,
        )
        now = self._clock()
        defaults = Agent(tenant="", agent_id="", name="")
        agent = Agent(
            tenant=principal.tenant,
            agent_id=new_id(),
            name=name.strip(),
            description=description,
            default_timeout_seconds=default_timeout_seconds or defaults.default_timeout_seconds,
            max_attempts=max_attempts or defaults.max_attempts,
            input_timeout_seconds=input_timeout_seconds or defaults.input_timeout_seconds,
            metadata=metadata or {},
            created_at=now,
            updated_at=now,
        )
        await self._store.write(lambda tx: tx.insert_agent(agent))
        return agent

    async def get(self, principal: Principal, agent_id: str) -> Agent:
        agent_id = check_id(agent_id, "agent_id")
        return await self._store.read(lambda tx: find_agent(tx, principal.tenant, agent_id))

    async def list(self, principal: Principal, *, page_size: int = 0, page_token: str = "") -> tuple[list[Agent], str]:
        """A page of the tenant's agents, oldest first, and the next page's token ("" at the end)."""
        limit = validation.validate_page_size(page_size)
        query = {"tenant": principal.tenant, "kind": "agents"}
        after: tuple[datetime, str] | None = None
        if page_token:
            created, agent_id = self._tokens.decode(page_token, query)
            after = (datetime.fromisoformat(created), agent_id)
        agents = await self._store.read(
            lambda tx: tx.list_agents(principal.tenant, after_created=after, limit=limit + 1)
        )
        if len(agents) <= limit:
            return agents, ""
        agents = agents[:limit]
        last = agents[-1]
        return agents, self._tokens.encode(query, [last.created_at.isoformat(), last.agent_id])

    async def _change(self, principal: Principal, agent_id: str, fn: Callable[[Agent], Agent]) -> Agent:
        agent_id = check_id(agent_id, "agent_id")
        now = self._clock()

        def op(tx: WriteTx) -> Agent:
            agent = find_agent(tx, principal.tenant, agent_id)
            changed = fn(agent)
            if changed != agent:
                changed = replace(changed, updated_at=now)
                tx.update_agent(changed)
            return changed

        async def write_then_tell() -> Agent:
            agent = await self._store.write(op)
            self.on_status_change(agent.tenant, agent.agent_id)
            return agent

        return await to_the_end(write_then_tell())

    async def update(
        self,
        principal: Principal,
        agent_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        default_timeout_seconds: int | None = None,
        max_attempts: int | None = None,
        input_timeout_seconds: int | None = None,
        metadata: JsonObject | None = None,
    ) -> Agent:
        """Set the given fields; None leaves a field as it is."""
        validation.validate_agent_fields(
            name=name,
            description=description,
            default_timeout_seconds=default_timeout_seconds,
            max_attempts=max_attempts,
            input_timeout_seconds=input_timeout_seconds,
            metadata=metadata,
            limits=self._limits,
            creating=False,
        )
        given: dict[str, Any] = {
            "name": name.strip() if name is not None else None,
            "description": description,
            "default_timeout_seconds": default_timeout_seconds,
            "max_attempts": max_attempts,
            "input_timeout_seconds": input_timeout_seconds,
            "metadata": metadata,
        }
        changes = {k: v for k, v in given.items() if v is not None}
        return await self._change(principal, agent_id, lambda agent: replace(agent, **changes))

    async def set_status(self, principal: Principal, agent_id: str, status: str, status_message: str = "") -> Agent:
        wanted = validation.validate_agent_status(status, status_message)
        return await self._change(
            principal, agent_id, lambda agent: replace(agent, status=wanted, status_message=status_message)
        )

    async def pause(self, principal: Principal, agent_id: str) -> Agent:
        return await self.set_status(principal, agent_id, AgentStatus.PAUSED)

    async def resume(self, principal: Principal, agent_id: str) -> Agent:
        return await self.set_status(principal, agent_id, AgentStatus.ACTIVE)

    async def stop(self, principal: Principal, agent_id: str) -> Agent:
        return await self.set_status(principal, agent_id, AgentStatus.STOPPED)

    async def delete(self, principal: Principal, agent_id: str) -> int:
        """Delete the agent; returns how many unfinished tasks were cancelled with it."""
        agent_id = check_id(agent_id, "agent_id")
        tenant = principal.tenant
        now = self._clock()

        await self._store.read(lambda tx: find_agent(tx, tenant, agent_id))

        # In bounded writes, the history first, then the unfinished tasks: one write deleting a
        # large agent would hold the writer (and the event loop it runs on) for as long as the
        # whole cascade or every cancellation takes.
        def delete_finished(tx: WriteTx) -> int:
            return tx.delete_finished_tasks(tenant, agent_id, DELETE_BATCH)

        await in_bounded_writes(lambda: self._store.write(delete_finished), DELETE_BATCH)
        self._hub.forget_agent(tenant, agent_id)  # what it remembers of them is deleted now

        def cancel(tx: WriteTx, limit: int | None) -> list[tuple[Task, list[TaskEvent]]]:
            find_agent(tx, tenant, agent_id)
            # Saved before the delete, so webhook tasks still report their cancellation: the
            # outbox rows outlive the tasks they describe.
            unfinished = tx.unfinished_tasks(tenant, agent_id, limit)
            return [save(tx, lifecycle.cancel(task, now, lifecycle.AGENT_DELETED)) for task in unfinished]

        def cancel_rest_and_delete(tx: WriteTx) -> list[tuple[Task, list[TaskEvent]]]:
            changes = cancel(tx, None)  # whatever was submitted meanwhile: normally few
            tx.delete_agent(tenant, agent_id)
            return changes

        async def write_then_publish(
            op: Callable[[WriteTx], list[tuple[Task, list[TaskEvent]]]], deleted: bool = False
        ) -> int:
            changes = await self._store.write(op)
            for task, events in changes:
                self._hub.publish(task, events)
            if deleted:  # in the same step, so no watch takes a snapshot of a deleted task
                self._hub.forget_agent(tenant, agent_id)
            return len(changes)

        cancelled = await in_bounded_writes(
            lambda: to_the_end(write_then_publish(lambda tx: cancel(tx, DELETE_BATCH))), DELETE_BATCH
        )
        cancelled += await to_the_end(write_then_publish(cancel_rest_and_delete, deleted=True))
        self.on_status_change(tenant, agent_id)
        return cancelled
