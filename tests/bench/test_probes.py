"""The probes behind statements in docs/benchmarks.md still run and print their figures (small
sizes; no timing asserted)."""

from __future__ import annotations

import re

import pytest

from bench.probes import stream_messages, submit_in_process

pytestmark = pytest.mark.asyncio


async def test_the_stream_message_probe_prints_cost_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    await stream_messages.main(items=320)
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == [1, 4, 16, 1, 4, 16]
    assert all(re.search(r"[\d.]+ us CPU per item", line) for line in lines)


async def test_the_in_process_submit_probe_prints_cost_per_submit(capsys: pytest.CaptureFixture[str]) -> None:
    await submit_in_process.main(rounds=1, per_slot=2)
    (line,) = capsys.readouterr().out.splitlines()
    assert re.search(r"Submits/s in process, +\d+ us CPU per Submit", line)
