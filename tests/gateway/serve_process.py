"""`agenttasks serve` with its gateway as a real child process, and a look at its Envoy child."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "agenttasks"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "agenttasks.cli.main"]
REST_LISTENING = re.compile(r"^agenttasks REST listening on (http://\S+)$")
GRPC_LISTENING = re.compile(r"^agenttasks gRPC listening on (\S+)$")
ADMIN_KEY = re.compile(r"^admin api key: (\S+)$")
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def children(pid: int) -> dict[int, str]:
    """{child pid: command name} of a process, from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat[stat.index("(") + 1 :].rpartition(")")
        if int(rest.split()[1]) == pid:
            found[int(entry.name)] = name
    return found


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.02)


class Serve:
    """`agenttasks serve --db DB --grpc-port 0 [ARGS...]` in the background; killed by `close`."""

    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None) -> None:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTTASKS_")}, **(env or {})}
        self.proc = subprocess.Popen(
            [*COMMAND, "serve", "--db", str(db), "--grpc-port", "0", *args],
            cwd=db.parent,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(pipe: object, lines: list[str]) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            lines.append(line.rstrip("\n"))

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def line(self, pattern: re.Pattern[str]) -> str:
        """The first group of the first stdout line matching `pattern`, waiting for it."""
        deadline = time.monotonic() + DEADLINE
        while True:
            for line in list(self.out):
                if match := pattern.match(line):
                    return match.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"no {pattern.pattern!r}; exit {self.proc.returncode}\n{self.stdout}\n{self.stderr}")
            time.sleep(0.02)

    def envoy_pid(self) -> int:
        envoys = [pid for pid, name in children(self.proc.pid).items() if name == "envoy"]
        assert len(envoys) == 1, children(self.proc.pid)
        return envoys[0]

    def wait(self) -> int:
        code = self.proc.wait(timeout=DEADLINE)
        self.close()
        return code

    def close(self) -> None:
        """Make sure the process is gone and its output collected. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=DEADLINE)
        for thread in self._threads:
            thread.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
