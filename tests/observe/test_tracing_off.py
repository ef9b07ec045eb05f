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
from collections.abc import Iterator
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


@pytest.fixture
def restored() -> Iterator[None]:
    """Whatever a test turns on here is off again after it."""
    yield
    tracing.shutdown()


def test_the_variables_choose_exporters_and_name_the_service(monkeypatch: pytest.MonkeyPatch, restored: None) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: no span is made
    monkeypatch.setenv("OTEL_SERVICE_NAME", "named-by-otel")
    assert tracing.setup_from_env("agenttasks")
    assert tracing.enabled()
    assert tracing._provider is not None  # the only way to see the resource it built
    assert tracing._provider.resource.attributes["service.name"] == "named-by-otel"
    tracing.shutdown()
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    assert tracing.setup_from_env("agenttasks-worker")
    assert tracing._provider is not None
    assert tracing._provider.resource.attributes["service.name"] == "agenttasks-worker"


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},  # nothing agenttasks can export with
    ],
)
def test_the_setting_does_not_override_what_the_variables_forbid(env: dict[str, str], restored: None) -> None:
    assert not tracing.setup_from_env("agenttasks", force=True, environ=env)
    assert not tracing.enabled()


def test_the_setting_alone_turns_tracing_on(restored: None) -> None:
    assert tracing.setup_from_env("agenttasks", force=True, environ={})
    assert tracing.enabled()
