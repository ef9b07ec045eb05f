"""Tracing off costs nothing and needs nothing (issue 16 point 4).

Off (the default), the server imports no OpenTelemetry module at all, however a task goes; asked
for by OTEL_* variables without the otel extra installed, it says how to install it and runs
unchanged. Each case runs a whole task in a fresh interpreter (tests/observe/untraced_run.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agenttasks.observe import tracing

ROOT = Path(__file__).resolve().parents[2]


def run(mode: str, **env: str) -> tuple[dict[str, object], str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTTASKS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "tests.observe.untraced_run", mode],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.timeout(90)
def test_off_by_default_nothing_of_opentelemetry_is_imported() -> None:
    outcome, _ = run("off")
    assert outcome == {
        "status": "completed",
        "worker_saw": [["", ""]],  # not traced here, so no context was taken from the Submit
        "tracing": False,
        "turned_on": False,
        "otel_modules": [],
    }


@pytest.mark.timeout(90)
def test_asked_for_without_the_extra_it_says_so_and_runs_unchanged() -> None:
    outcome, stderr = run("missing", OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert outcome["status"] == "completed"
    assert (outcome["turned_on"], outcome["tracing"], outcome["otel_modules"]) == (False, False, [])
    assert tracing.INSTALL_HINT in stderr


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SERVICE_NAME": "only-a-name"}, False),
    ],
)
def test_which_variables_turn_tracing_on(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted
