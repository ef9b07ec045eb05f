"""The README's commands are true: its tour runs as written against a real `serve`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .support import ADMIN_KEY_PREFIX, BIN_DIR, REPO, Server, Spawned, base_env

README = REPO / "README.md"
TOUR_MARKER = "<!-- tour -->"
WORKER_TOUR_MARKER = "<!-- tour:worker -->"
SERVE_MARKER = "<!-- serve -->"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset) of every fenced code block."""
    return [(m.group(1), m.group(2), m.start()) for m in FENCE.finditer(text)]


def tour_script(marker_text: str = TOUR_MARKER) -> str:
    text = README.read_text()
    marker = text.index(marker_text)
    language, body, offset = next(block for block in code_blocks(text) if block[2] > marker)
    between = text[marker + len(marker_text) : offset]
    assert between.strip() == "", "the tour's code block must directly follow the marker"
    assert language == "bash"
    return body


def command_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_first_code_block_installs_and_serves_then_tests() -> None:
    _, body, _ = code_blocks(README.read_text())[0]
    lines = command_lines(body)
    assert len(lines) == 2, lines
    assert lines[0].rstrip().endswith("agenttasks serve"), lines
    assert lines[1].rstrip().endswith("pytest"), lines


def test_the_tour_block_is_found_and_sets_the_key_itself() -> None:
    script = tour_script()
    assert any(line.startswith("export AGENTTASKS_API_KEY") for line in script.splitlines())
    assert "agenttasks submit" in script


def _comparable(lines: list[str]) -> list[str]:
    """serve's lines with what differs from run to run (ports, the key) put in general terms."""
    lines = [re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line) for line in lines]
    return [re.sub(r"atk_\S+", "atk_KEY", line) for line in lines]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_readme_shows_what_serve_prints(tmp_path: Path) -> None:
    text = README.read_text()
    marker = text.index(SERVE_MARKER)
    language, body, offset = next(block for block in code_blocks(text) if block[2] > marker)
    assert language == "console" and text[marker + len(SERVE_MARKER) : offset].strip() == ""
    command, *shown = body.splitlines()
    assert command == "$ agenttasks serve"
    # The README's own command with its defaults, but on free ports, in an empty directory.
    serve = Spawned("serve", "--grpc-port", "0", "--http-port", "0", cwd=tmp_path)
    try:
        serve.wait_for_stdout(re.compile("^" + re.escape(ADMIN_KEY_PREFIX)))
        printed, logged = serve.stdout.splitlines(), serve.stderr
    finally:
        serve.stop()
    assert _comparable(printed) == _comparable(shown)
    assert logged == "", "each fact once, on stdout: nothing is logged on a clean start"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_tour_runs_as_written(server: Server) -> None:
    script = "\n".join(line for line in tour_script().splitlines() if not line.startswith("export AGENTTASKS_API_KEY"))
    env = base_env(
        {
            "AGENTTASKS_SERVER": server.address,
            "AGENTTASKS_API_KEY": server.admin_key,
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=server.db_path.parent,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert re.search(r"^status\s+queued$", out, re.MULTILINE), out
    assert re.search(r"^priority\s+8$", out, re.MULTILINE), out
    assert re.search(r"sent; task queued$", out, re.MULTILINE), out
    assert re.search(r"^\S+ cancelled$", out, re.MULTILINE), out
    assert "[end] task finished; task cancelled" in out
    assert re.search(r"^\S+ paused$", out, re.MULTILINE), out
    assert out.rstrip().endswith("refused: the agent is paused"), out
    assert "AGENT_UNAVAILABLE" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_worker_tour_runs_as_written(server: Server, tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = base_env(
        {
            "AGENTTASKS_SERVER": server.address,
            "AGENTTASKS_API_KEY": server.admin_key,
            "AGENTTASKS_DB": str(server.db_path),
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    # Its own session, so the workers it starts in the background go with it even if it fails.
    tour = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", tour_script(WORKER_TOUR_MARKER)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = tour.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tour.pid, signal.SIGKILL)
        tour.communicate()
    assert tour.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "HELLO, QUEUE!" in out, out
    assert "agent asks: What is your name?" in out, out
    assert "Hello, Ada! You asked: Write a haiku about queues" in out, out
    assert [p.name for p in tmp_path.iterdir()] == ["examples"], "the tour leaves no files behind"
    assert out.rstrip().endswith("[end] task finished; task completed"), out
