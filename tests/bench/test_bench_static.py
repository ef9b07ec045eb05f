"""The harness is held to the code's standards: ruff clean and formatted, and mypy --strict
(tests/test_quality.py covers server/ and tests/, not bench/)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# bench/peers imports these; without them mypy cannot check those modules.
PEER_MODULES = ("huey", "a2a", "sqlalchemy", "starlette", "uvicorn", "pgqueuer", "psycopg")


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_on_bench() -> None:
    for command in (("check", "bench"), ("format", "--check", "bench")):
        done = run(tool("ruff"), *command)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_on_bench() -> None:
    missing = [name for name in PEER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the peers' packages are not installed ({', '.join(missing)}): pip install -e '.[bench]'")
    done = run(tool("mypy"), "--strict", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
