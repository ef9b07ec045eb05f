"""Short and long modes of the fault tests.

CI runs the short mode. `AGENTTASKS_LONG_RUN=1 pytest -n0 -s tests/cli/test_crash_safety.py
tests/dispatch/test_queue_faults.py` runs the long mode that docs/reliability.md cites: more
rounds over bigger backlogs. Each test prints its figures on one line starting with `figures:`
(seen with `-s`), so the document's numbers can be re-made with one command.
"""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("AGENTTASKS_LONG_RUN") == "1"


def short_or_long(short: int, long: int) -> int:
    return long if LONG else short


def time_limit(short_seconds: float) -> pytest.MarkDecorator:
    """The test's pytest-timeout: the suite's default in the short mode, hours in the long one."""
    return pytest.mark.timeout(4 * 3600 if LONG else short_seconds)


def report(test: str, **figures: object) -> None:
    """Print one line of figures for the document."""
    mode = "long" if LONG else "short"
    print(f"figures: {test} ({mode}): " + ", ".join(f"{k}={v}" for k, v in figures.items()))
