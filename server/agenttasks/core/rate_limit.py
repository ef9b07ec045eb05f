"""A token bucket per credential: how many calls one API key or JWT subject may make.

One client's flood must not become every tenant's outage: each credential gets `rate` calls a
second on average and up to `burst` at once; a call over that is refused at once (before it
reads or writes anything) with how long until a token is back, so a well-behaved client knows
when to retry. Buckets live in this process only: behind N replicas a credential may make up
to N times the rate, which bounds the whole service's load all the same.

At most `max_buckets` buckets are kept, least recently used first out (a forgotten one starts
full again), so memory does not grow with the number of credentials ever seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_BUCKETS = 100_000


class TokenBuckets:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_buckets
        # subject -> (tokens left, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, subject: str) -> float:
        """Take a token for `subject`: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        tokens, then = self._buckets.pop(subject, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[subject] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait
