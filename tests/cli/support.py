"""Real-process helpers for the CLI: `agenttasks serve` as a child process, and a `cli` runner.

Everything here runs the installed `agenttasks` script (or `python -m agenttasks.cli.main` when
the script is missing) exactly as a person would: no in-process shortcuts, real SQLite files in
a temporary directory or real PostgreSQL databases (`PostgresUrl`), a free port picked by the
server itself (`--grpc-port 0`).

A server process is always stopped in a `finally` (SIGTERM, then SIGKILL if it does not go), so
a failing test never leaves one behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
_SCRIPT = BIN_DIR / "agenttasks"
AGENTTASKS: tuple[str, ...] = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "agenttasks.cli.main")
"""The command that runs the CLI."""

LISTENING = re.compile(r"^agenttasks gRPC listening on (\S+:\d+)$")
ADMIN_KEY_PREFIX = "admin api key: "
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

CLI_TIMEOUT = 30.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def base_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The test process's environment without any AGENTTASKS_* setting, plus `overrides`.

    A value of None removes the variable. Settings leaking in from the developer's shell would
    make the tests depend on it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTTASKS_")}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `agenttasks ARGS...` to completion (text mode, never raising on a non-zero exit)."""
    return subprocess.run(
        [*AGENTTASKS, *args],
        env=base_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def one_line(text: str) -> str:
    """The only non-empty line of `text`; fails when there are none or several."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line, got {len(lines)}:\n{text}"
    return lines[0]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Reader(threading.Thread):
    """Collects a pipe's lines as they arrive, so the child never blocks on a full pipe."""

    def __init__(self, pipe: object) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        for line in self._pipe:  # type: ignore[attr-defined]
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.snapshot())


class Spawned:
    """One CLI child process running in the background, and what it printed so far."""

    def __init__(self, *args: str, env: Mapping[str, str | None] | None = None, cwd: Path | None = None) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*AGENTTASKS, *self.args],
            env=base_env(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out = _Reader(self.proc.stdout)
        self._err = _Reader(self.proc.stderr)
        self._out.start()
        self._err.start()
        self.returncode: int | None = None

    @property
    def stdout(self) -> str:
        return self._out.text

    @property
    def stderr(self) -> str:
        return self._err.text

    def wait_for_stdout(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line matching `pattern`; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            if exited:
                self._join()
            for line in self._out.snapshot():
                if match := pattern.match(line):
                    return match
            if exited:
                pytest.fail(
                    f"{' '.join(self.args[:2])} exited with {self.proc.returncode} before printing "
                    f"{pattern.pattern!r}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern.pattern!r} on stdout in {timeout}s\nstdout:\n{self.stdout}")
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait for the exit, return the exit code (the output is then complete)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to exit on its own; kill it if it does not."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return self.returncode

    def kill(self) -> None:
        """Make sure the process is gone and its pipes are drained. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._join()

    def _join(self) -> None:
        self._out.join(timeout=5)
        self._err.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not self._reading(pipe):
                pipe.close()

    def _reading(self, pipe: object) -> bool:
        """Whether a reader thread still holds `pipe` (closing it under the thread would race)."""
        reader = self._out if pipe is self.proc.stdout else self._err
        return reader.is_alive()


class PostgresUrl(str):
    """A PostgreSQL store URL with the `.parent` a database file's Path has: a directory of the
    test's own for the server and the commands to run in. Tests written against a database file
    (`--db str(server.db_path)`, `cwd=server.db_path.parent`) thereby run unchanged on PostgreSQL."""

    parent: Path

    def __new__(cls, url: str, parent: Path) -> PostgresUrl:
        made = super().__new__(cls, url)
        made.parent = parent
        return made


class ServerProcess(Spawned):
    """`agenttasks serve --db DB --grpc-port 0 --no-gateway [EXTRA...]`."""

    def __init__(self, db: Path | PostgresUrl, *extra: str, env: Mapping[str, str | None] | None = None) -> None:
        super().__init__("serve", "--db", str(db), "--grpc-port", "0", "--no-gateway", *extra, env=env, cwd=db.parent)
        self.db = db

    def address(self) -> str:
        return self.wait_for_stdout(LISTENING).group(1)

    def admin_key(self) -> str:
        return self.wait_for_stdout(re.compile("^" + re.escape(ADMIN_KEY_PREFIX) + r"(\S+)$")).group(1)


@contextmanager
def serving(
    db: Path | PostgresUrl, *extra: str, env: Mapping[str, str | None] | None = None
) -> Iterator[ServerProcess]:
    """A `serve` that is up (address and first-start key printed) until the block ends; then it
    must stop cleanly on SIGTERM, and is killed whatever happens."""
    process = ServerProcess(db, *extra, env=env)
    try:
        process.address()
        process.admin_key()
        yield process
        assert_clean_stop(process)
    finally:
        process.kill()


def assert_clean_stop(server: ServerProcess) -> None:
    """SIGTERM drains and exits 0, saying so."""
    code = server.stop()
    assert code == 0, f"serve exited {code} on SIGTERM\nstderr:\n{server.stderr}"
    assert "agenttasks: draining" in server.stderr
    assert "agenttasks: stopped" in server.stderr
    assert "Traceback" not in server.stderr, server.stderr


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The one stderr line of a command that must have failed cleanly (no traceback)."""
    assert result.returncode != 0, f"expected failure, got exit 0\nstdout:\n{result.stdout}"
    if code is not None:
        assert result.returncode == code, f"exit {result.returncode}, expected {code}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return one_line(result.stderr)


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a command argparse refused: exit 2, `PROG: error: ...`, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}, expected 2\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


StartServer = Callable[..., ServerProcess]
"""The `start_server` fixture: `start_server(db, *extra_flags, env=...)`."""

Cli = Callable[..., "subprocess.CompletedProcess[str]"]
"""The `cli` fixture: `cli(*args, env=..., api_key=...)`."""


class Server(NamedTuple):
    """What the `server` fixture yields: where it listens, its bootstrap admin key, its database."""

    address: str
    admin_key: str
    db_path: Path | PostgresUrl
