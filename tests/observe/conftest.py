"""The `json_lines` fixture: logs configured as `serve --log-format json` does, read back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.observe.support import Lines, logging_to_buffer, parsed


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    with logging_to_buffer() as buffer:
        yield lambda: parsed(buffer)
