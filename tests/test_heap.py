"""The server exempts its start-up objects from full garbage-collection passes, collects its
young generation less often, and later garbage is still collected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agenttasks.heap import THRESHOLDS, freeze_startup_objects


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # give pytest's own objects back to the collector
    gc.set_threshold(*thresholds)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_freezing_exempts_what_exists_and_still_collects_new_cycles(unfrozen: None) -> None:
    survivor = [object()]
    frozen = freeze_startup_objects()
    assert frozen > 1000  # at least the modules and functions the import of this test made
    # What it returns is what it froze; a frozen object another thread (the test suite's
    # PostgreSQL schema helper, say) lets go of meanwhile is freed and leaves the count.
    assert 0 < gc.get_freeze_count() <= frozen
    assert not any(o is survivor for o in gc.get_objects())  # the frozen are not walked
    assert gc.get_threshold() == THRESHOLDS  # a young generation large enough that calls in flight die in it

    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle only a collection can free
    del a, b
    assert gc.collect() >= 2
