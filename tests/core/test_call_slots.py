"""Running slots per tenant: a tenant alone is never held back; while another tenant calls, each
tenant's extra calls wait in its own line, first come first served, and a full line refuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agenttasks.core.call_slots import ACTIVE_SECONDS, CallSlots
from agenttasks.core.errors import TooManyCalls

pytestmark = pytest.mark.asyncio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def hold(slots: CallSlots, tenant: str, role: str, entered: list[str], name: str, leave: asyncio.Event) -> None:
    async with slots.slot(tenant, role):
        entered.append(name)
        await leave.wait()


@contextlib.asynccontextmanager
async def started(*calls: asyncio.Task[None]) -> AsyncIterator[None]:
    try:
        await asyncio.sleep(0)  # every call has run up to its slot (taken, or waiting for one)
        yield
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


async def test_a_tenant_alone_is_not_capped() -> None:
    slots = CallSlots(per_tenant=2, waiting=10, clock=Clock())
    entered: list[str] = []
    leave = asyncio.Event()
    calls = [asyncio.create_task(hold(slots, "a", "client", entered, f"a{i}", leave)) for i in range(5)]
    async with started(*calls):
        assert entered == ["a0", "a1", "a2", "a3", "a4"]
        assert slots.running("a", "client") == 5


async def test_with_another_tenant_calling_extra_calls_wait_their_turn_in_order() -> None:
    clock = Clock()
    slots = CallSlots(per_tenant=2, waiting=10, clock=clock)
    entered: list[str] = []
    leaves = {name: asyncio.Event() for name in ("b0", "a0", "a1", "a2", "a3", "b1")}
    b0 = asyncio.create_task(hold(slots, "b", "client", entered, "b0", leaves["b0"]))
    a = [asyncio.create_task(hold(slots, "a", "client", entered, f"a{i}", leaves[f"a{i}"])) for i in range(4)]
    async with started(b0, *a):
        assert entered == ["b0", "a0", "a1"]  # a2 and a3 wait: two of a's are running
        b1 = asyncio.create_task(hold(slots, "b", "client", entered, "b1", leaves["b1"]))
        async with started(b1):
            assert entered[-1] == "b1"  # the other tenant is not behind a's line
            leaves["a1"].set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert entered[-1] == "a2" and slots.running("a", "client") == 2  # the slot passed on, in order
            leaves["a0"].set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert entered[-1] == "a3"


async def test_clients_and_workers_of_a_tenant_have_separate_lines() -> None:
    slots = CallSlots(per_tenant=1, waiting=10, clock=Clock())
    entered: list[str] = []
    leave = asyncio.Event()
    calls = [
        asyncio.create_task(hold(slots, "b", "client", entered, "b", leave)),
        asyncio.create_task(hold(slots, "a", "client", entered, "a-client", leave)),
        asyncio.create_task(hold(slots, "a", "client", entered, "a-client-2", leave)),
        asyncio.create_task(hold(slots, "a", "worker", entered, "a-worker", leave)),
    ]
    async with started(*calls):
        assert entered == ["b", "a-client", "a-worker"]


async def test_a_full_line_refuses_and_a_waiter_that_gives_up_leaves_no_trace() -> None:
    slots = CallSlots(per_tenant=1, waiting=1, clock=Clock())
    entered: list[str] = []
    leave = asyncio.Event()
    b = asyncio.create_task(hold(slots, "b", "client", entered, "b", leave))
    a0 = asyncio.create_task(hold(slots, "a", "client", entered, "a0", leave))
    a1 = asyncio.create_task(hold(slots, "a", "client", entered, "a1", leave))
    async with started(b, a0, a1):
        with pytest.raises(TooManyCalls):
            async with slots.slot("a", "client"):
                pytest.fail("a third call of a got in")
        a1.cancel()  # its deadline passed while it waited
        await asyncio.sleep(0)
        leave.set()
        await asyncio.gather(a0, b)
        assert entered == ["b", "a0"]
        assert slots.running("a", "client") == 0 and not slots._lines


async def test_the_cap_lifts_once_the_other_tenant_has_been_quiet_a_while() -> None:
    clock = Clock()
    slots = CallSlots(per_tenant=1, waiting=10, clock=clock)
    async with slots.slot("b", "client"):
        pass
    entered: list[str] = []
    leave = asyncio.Event()
    first = asyncio.create_task(hold(slots, "a", "client", entered, "a0", leave))
    async with started(first):
        with pytest.raises(TimeoutError):  # b called just now: a's second call waits
            async with asyncio.timeout(0.05), slots.slot("a", "client"):
                pass
        clock.now += 2 * ACTIVE_SECONDS  # b has not called since
        async with asyncio.timeout(5), slots.slot("a", "client"):
            entered.append("a1")
        assert entered == ["a0", "a1"]


async def test_tenants_that_stopped_calling_are_forgotten() -> None:
    clock = Clock()
    slots = CallSlots(per_tenant=8, waiting=10, clock=clock)
    for i in range(100):
        async with slots.slot(f"tenant-{i}", "client"):
            pass
    clock.now += 2 * ACTIVE_SECONDS
    async with slots.slot("last", "client"):
        pass
    assert list(slots._seen) == ["last"] and not slots._lines
