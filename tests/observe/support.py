"""Logs as `serve --log-format json` writes them, into a buffer the test reads back parsed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from agenttasks.observe import logs

Lines = Callable[[], list[dict[str, Any]]]
"""Every line logged so far, each parsed (a line that is not one JSON object fails the test)."""


@contextmanager
def logging_to_buffer(log_format: str = "json", access: bool | None = None) -> Iterator[io.StringIO]:
    """`logs.configure` into a buffer for the block; the previous handlers and levels after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logs.access_log.level, logs.envoy_access_log.level)
    buffer = io.StringIO()
    logs.configure(log_format, "debug", access=access, stream=buffer)
    try:
        yield buffer
    finally:
        logs.configure("text")  # closes the buffer's handler, and `say` prints again
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logs.access_log.setLevel(saved[2])
        logs.envoy_access_log.setLevel(saved[3])


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines
