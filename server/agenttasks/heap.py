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
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect what start-up left as garbage, then exempt the survivors from later passes.
    Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
