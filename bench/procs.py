"""Child processes of the harness: started in their own process group, always stopped.

Every command runs behind a tiny Python prelude that asks Linux to SIGKILL it when the harness
dies (PR_SET_PDEATHSIG) and then execs the real program, so not even a `kill -9` of the harness
leaves a server behind. `Proc.stop` sends SIGTERM to the whole group, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench import USER_ENV

# Run as `python -I -S -c _PRELUDE PARENT_PID PROGRAM ARGS...`: SIGKILL on the parent's death
# (it survives exec), leave at once if the parent is already gone, then become PROGRAM.
_PRELUDE = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0 or os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


class ProcError(RuntimeError):
    """A child process failed to start or died; the message ends with its last log lines."""


def _dying_with_us(command: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _PRELUDE, str(os.getpid()), *command]


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds a process (all its threads) has used, per thread name, at one moment."""

    total: float
    by_thread: dict[str, float]


def cpu_sample(pid: int) -> CpuSample:
    """User+system CPU seconds of `pid` from /proc, summed per thread name (comm)."""
    by_thread: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended between listing and reading
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        by_thread[name] = by_thread.get(name, 0.0) + seconds
    return CpuSample(sum(by_thread.values()), by_thread)


def cpu_used(before: CpuSample, after: CpuSample, seconds: float) -> tuple[float, dict[str, float]]:
    """Cores used between two samples (1.0 = one core busy), overall and per thread name.

    Threads that ended in between are not counted: the harness samples long-lived servers.
    """
    per = {name: (after.by_thread[name] - before.by_thread.get(name, 0.0)) / seconds for name in after.by_thread}
    return (after.total - before.total) / seconds, {k: round(v, 3) for k, v in sorted(per.items()) if v > 0.005}


def children(pid: int) -> dict[int, str]:
    """{pid: command name} of the direct children of `pid`, from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found[int(entry.name)] = name
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcError(f"no VmRSS for pid {pid}")


class Proc:
    """One child process with its output in a log file. An async context manager."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_dir / f"{name}.log"
        # The bench's own modules (python -m bench.worker, ...) must import from any working directory.
        path = os.pathsep.join(p for p in (str(ROOT), USER_ENV.get("PYTHONPATH", "")) if p)
        self.env = {**USER_ENV, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})}
        self.cwd = cwd
        self.stop_signal = stop_signal
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} not started"  # noqa: S101
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *_dying_with_us(self.command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group, which stop() signals as a whole
            )
        return self

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_for_line(self, pattern: str, within: float = 30.0) -> re.Match[str]:
        """The first log line matching `pattern`; ProcError if the process exits or time runs out."""
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            with contextlib.suppress(FileNotFoundError):
                for line in self.log_path.read_text(errors="replace").splitlines():
                    if match := regex.search(line):
                        return match
            if self._process is not None and self._process.returncode is not None:
                raise ProcError(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if loop.time() > deadline:
                raise ProcError(f"{self.name}: no line matching {pattern!r} after {within:g}s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    async def wait(self, within: float) -> int | None:
        """The exit code, or None if it is still running after `within` seconds."""
        assert self._process is not None  # noqa: S101
        try:
            return await asyncio.wait_for(self._process.wait(), within)
        except TimeoutError:
            return None

    async def stop(self, grace: float = 10.0) -> None:
        """Signal the process group (SIGTERM by default), then SIGKILL it after `grace` seconds. Safe twice."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, self.stop_signal)
        if await self.wait(grace) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        # Whatever else is left in the group (a grandchild that ignored the signal) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def __aenter__(self) -> Proc:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
