"""Static checks as tests, so the README's one test command covers them: the API lints, the
generated modules match proto/, the code is typed and linted, and the core stays neutral."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


def test_buf_lint() -> None:
    result = run(tool("buf"), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_modules_match_proto() -> None:
    result = run(sys.executable, "scripts/gen_proto.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_main() -> None:
    has_main = run("git", "rev-parse", "--verify", "--quiet", "main").returncode == 0
    if not has_main:
        pytest.skip("no local main branch to compare the API against (not a git checkout of main)")
    result = run(tool("buf"), "breaking", "--against", ".git#branch=main")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = run(tool("ruff"), "check", "server", "tests", "scripts", "gateway", "examples")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("ruff"), "format", "--check", "server", "tests", "scripts", "gateway", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_mypy_strict() -> None:
    result = run(tool("mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_neither_transport_nor_storage() -> None:
    result = run(tool("lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
