"""Slots for unary calls, per tenant and role: one tenant's flood waits in its own line.

A rate per credential bounds how many calls a client may make, but not how much of the server
they take at once: a tenant whose clients keep 64 calls in flight (or that spreads its calls
over many keys) fills the event loop and the store writer's batches, and every other tenant's
call waits behind them. Measured on this machine kind (`python -m bench --only isolation`):
alone a quiet tenant's p50 was 2.3 ms; beside a tenant flooding at 64 calls in flight, 32.7 ms.

So while more than one tenant is calling (one call in the last `ACTIVE_SECONDS`), each
(tenant, role) may have at most `per_tenant` unary calls *running* in this server; more wait in
line, first come first served, doing nothing until a slot is theirs (a waiting call costs no
CPU, and its deadline keeps running). Another tenant's call finds its own line short and runs
at once. A tenant alone on the server is not held back: capping it then would only make its
store batches smaller (8 at a time cost one client with 64 in flight a fifth of its Submit
rate). Clients and workers of one tenant have separate lines, so a tenant's own client flood
does not hold up its workers' reports and lease renewals. At most `waiting` calls of one line
wait; beyond that a call is refused at once (`TooManyCalls`), so a client that ignores every
deadline cannot queue without bound, and is told when to try again.

The default `per_tenant` is 1, measured (`python -m bench --only isolation`, docs/reliability.md):
the quiet tenant's p99 against alone was 1.15x-1.37x with 1 running call per tenant, 1.57x-2.0x
with 2, 2.3x with 4 and 4.9x with 8. Each running call of the flood is work the quiet tenant's
call waits behind in the event loop and the writer's batch. The price: while another tenant
calls, a tenant's calls run one at a time on a server (the flood made ~850 Submits/s instead of
~1,500); alone, it is not capped.

One running call is not yet enough: run back to back, a flood's single calls still kept the
server's one core busy (0.96 cores on an Intel host of this kind, 660-740 Submits/s), and the
quiet tenant's calls waited behind them, 1.6x-2.1x its unloaded p99. So a line that has calls
waiting also pauses between them: after a call that held its slot for t seconds, the next one
starts t * (1 - share) / share later, so the line keeps its slot busy at most `share` of the
time and the server keeps the rest for the others. A line with nothing waiting never pauses, so
a tenant making one call at a time is not slowed. The default share is a quarter, measured
(docs/reliability.md, four alternating pairs): server CPU under the flood 0.97 -> 0.38 cores, the
quiet tenant's p99 against alone 1.66x-1.69x -> 1.28x-1.45x; the flood made 230-237 Submits/s
instead of 680-719. Shares of 0.33 and 0.5 left 1.35x-1.65x and 1.42x-1.54x.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from agenttasks.core.errors import TooManyCalls

# A tenant that made a call this recently is calling: with another one, the caps apply.
ACTIVE_SECONDS = 1.0
# What a refused call is told to wait before it tries again (RetryInfo, Retry-After): long
# enough for a full line of calls taking milliseconds each to move on.
RETRY_AFTER_SECONDS = 1.0


@dataclass(slots=True)
class _Line:
    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class CallSlots:
    def __init__(
        self, per_tenant: int, waiting: int, share: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_tenant < 1 or waiting < 0 or not 0 < share <= 1:
            raise ValueError("per_tenant must be at least 1, waiting at least 0, and share in (0, 1]")
        self.per_tenant = per_tenant
        self.max_waiting = waiting
        self.share = share
        self._clock = clock
        self._lines: dict[tuple[str, str], _Line] = {}
        self._seen: dict[str, float] = {}  # tenant -> when it last called; pruned once a second
        self._pruned = clock()
        self.waited = 0  # calls that had to wait for a slot, since start (a metric)
        self.refused = 0  # calls refused because their line was full
        self.paused = 0.0  # seconds lines with calls waiting paused between them, since start (a metric)

    def waiting(self) -> int:
        """Calls waiting for a slot now, over every line."""
        return sum(len(line.waiting) for line in self._lines.values())

    def running(self, tenant: str, role: str) -> int:
        line = self._lines.get((tenant, role))
        return 0 if line is None else line.running

    def contended(self) -> bool:
        """Whether more than one tenant has called lately (then the caps apply)."""
        self._prune(self._clock())
        return len(self._seen) > 1

    def _prune(self, now: float) -> None:
        """Forget tenants quiet for ACTIVE_SECONDS, at most once a second: `_seen` stays as
        small as the set of tenants calling now."""
        if now - self._pruned >= ACTIVE_SECONDS:
            self._seen = {tenant: at for tenant, at in self._seen.items() if now - at < ACTIVE_SECONDS}
            self._pruned = now

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, role: str) -> AsyncIterator[None]:
        """Hold one of the line's slots for the body (waiting for one first if all are taken)."""
        now = self._clock()
        self._prune(now)
        self._seen[tenant] = now
        key = (tenant, role)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        if not line.waiting and (line.running < self.per_tenant or not self.contended()):
            line.running += 1
        else:
            if len(line.waiting) >= self.max_waiting:
                self.refused += 1
                raise TooManyCalls(self.per_tenant + self.max_waiting, RETRY_AFTER_SECONDS)
            self.waited += 1
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            line.waiting.append(turn)
            try:
                await turn  # `_release` hands its slot over by resolving this
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._release(key, line)  # given the slot just as it gave up: pass it on
                else:
                    with contextlib.suppress(ValueError):  # a release may have dropped it already
                        line.waiting.remove(turn)
                    self._forget_if_idle(key, line)
                raise
        began = self._clock()
        try:
            yield
        finally:
            self._release(key, line, self._clock() - began)

    def _release(self, key: tuple[str, str], line: _Line, held: float = 0.0) -> None:
        """Hand the slot to the line's next waiting call (after the line's pause, when it has
        held it for `held` seconds while others call), or give it up."""
        # Over the cap (it ran alone until another tenant came): the slot is not handed on.
        if line.running <= self.per_tenant or not self.contended():
            if line.waiting and held > 0 and self.share < 1 and self.contended():
                pause = held * (1 - self.share) / self.share
                self.paused += pause
                # The slot stays the line's meanwhile, so no call of it starts in the pause.
                asyncio.get_running_loop().call_later(pause, self._release, key, line)
                return
            while line.waiting:
                turn = line.waiting.popleft()
                if not turn.done():
                    turn.set_result(None)  # the slot passes to it: `running` stays as it is
                    return
        line.running -= 1
        self._forget_if_idle(key, line)

    def _forget_if_idle(self, key: tuple[str, str], line: _Line) -> None:
        if line.running == 0 and not line.waiting:
            self._lines.pop(key, None)
