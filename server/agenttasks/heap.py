"""Keeping the garbage collector's full passes short in a long-running server or worker.

CPython's oldest generation is collected now and then by walking every tracked object in it.
Once the service has started, that generation holds tens of thousands of objects made by
imports and start-up (modules, classes, functions, descriptor pools) that live as long as the
process: a full pass over them took 19-28 ms here, a stall of the event loop that every call in
flight waits out, and it showed as the worst dispatch latencies at a steady 500 tasks/s
(docs/benchmarks.md). `gc.freeze()` moves them into a permanent generation that collections
skip, as CPython's documentation suggests for this case; objects made while serving are still
collected as before. Workers do the same when they start serving: a worker's full pass
(15-20 ms) delayed the tasks it was being handed just as much.

What is made while serving still reaches the oldest generation: thousands of open watch streams
are long-lived, and with the default thresholds (700, 10, 10) every young collection also
promotes the objects of the calls in flight, so full passes came every few seconds under load.
With 3,000 streams open and another tenant submitting 1,000 tasks/s, a full pass walked 150,000-
285,000 objects and took 86-192 ms; they set a quiet tenant's p99 (`python -m bench --only
isolation`: 157-203 ms, against 50 ms once they were gone). A young generation of 50,000 objects
(as servers that tune CPython commonly use) means far fewer collections, so far fewer call
objects are caught alive and promoted, and no full pass came in that 10 s run; each young
collection walks at most that many objects, and garbage cycles wait a little longer to be freed.
"""

from __future__ import annotations

import gc

# Young generation size, then how many collections of each generation before the next one up.
THRESHOLDS = (50_000, 20, 100)


def freeze_startup_objects() -> int:
    """Collect what start-up left as garbage, then exempt the survivors from later passes.
    Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return gc.get_freeze_count()
