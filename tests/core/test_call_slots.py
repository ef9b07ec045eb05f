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


async def test_a_line_with_calls_waiting_pauses_between_them_to_keep_its_share() -> None:
    """Share 0.25: a call that held the slot 0.1 s makes the next one of its line start 0.3 s
    later (the line busy a quarter of the time); the other tenant is not held up meanwhile."""
    clock = Clock()
    slots = CallSlots(per_tenant=1, waiting=10, share=0.25, clock=clock)
    async with slots.slot("b", "client"):
        pass  # another tenant calling: the caps apply
    loop = asyncio.get_running_loop()
    entered: list[str] = []
    leave, second_in = asyncio.Event(), asyncio.Event()

    async def second() -> float:
        async with slots.slot("a", "client"):
            entered.append("a1")
            second_in.set()
            return loop.time()

    a0 = asyncio.create_task(hold(slots, "a", "client", entered, "a0", leave))
    a1 = asyncio.create_task(second())
    async with started(a0, a1):
        clock.now += 0.1  # a0 holds the slot 0.1 s
        released = loop.time()
        leave.set()
        await a0
        await asyncio.sleep(0.05)
        assert entered == ["a0"]  # a1 waits out the pause
        async with asyncio.timeout(1), slots.slot("b", "client"):
            entered.append("b")  # while the other tenant runs at once
        async with asyncio.timeout(5):
            await second_in.wait()
        assert await a1 - released >= 0.3 - 0.01  # the pause, at least (less only by clock resolution)
        assert entered == ["a0", "b", "a1"] and slots.paused == pytest.approx(0.3)


async def test_a_line_with_no_call_waiting_never_pauses() -> None:
    """One call at a time (nothing waiting when it ends): the next starts at once, whatever the share."""
    clock = Clock()
    slots = CallSlots(per_tenant=1, waiting=10, share=0.25, clock=clock)
    async with slots.slot("b", "client"):
        pass
    for _ in range(3):
        async with slots.slot("a", "client"):
            clock.now += 0.1
        assert slots.running("a", "client") == 0
    assert slots.paused == 0


async def test_a_share_outside_zero_to_one_is_refused() -> None:
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            CallSlots(per_tenant=1, waiting=1, share=share)
