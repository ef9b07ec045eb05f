"""py-spy against a server process during a measured window, and a summary of where time went.

`Profile` runs `py-spy record --nonblocking` (the target is never paused) for the measured
seconds and keeps the raw collapsed stacks; `summarise` turns them into shares of samples: per
thread, per leaf frame (self time) and per frame anywhere on the stack (inclusive time).
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.procs import Proc

RATE = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_PREFIXES = ("site-packages/", "/server/", "/lib/python3.11/", "/work/main/")


def pyspy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profile:
    """py-spy recording `pid` into `out_dir/NAME.txt` while the block runs (at most `seconds`).
    An async context manager: leaving it stops py-spy with SIGINT, on which it writes its file."""

    def __init__(self, pid: int, seconds: float, out_dir: Path, name: str) -> None:
        binary = pyspy()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: pip install -e '.[bench]'")
        self.raw = out_dir / f"{name}.txt"
        command = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", str(RATE), "--nonblocking", "--threads", "--full-filenames"]
        command += ["--format", "raw", "--output", str(self.raw)]
        self.proc = Proc(f"py-spy-{name}", command, out_dir, stop_signal=signal.SIGINT)

    async def __aenter__(self) -> Profile:
        await self.proc.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.proc.stop(grace=30)

    def summary(self, top: int = 15) -> dict[str, Any]:
        if not self.raw.exists():
            return {"error": f"py-spy wrote nothing:\n{self.proc.log_tail()}"}
        return summarise(self.raw.read_text(), top)


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"]
    for prefix in _PREFIXES:
        if prefix in file:
            file = file.split(prefix, 1)[1]
            break
    return f"{match['func']} ({file})"


def summarise(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares (0..1) of samples per thread, per leaf frame and per frame on the stack."""
    threads: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0].partition(": ")[2] or frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        names = [_short(f) for f in frames]
        leaf[names[-1]] += count
        for name in set(names):
            inclusive[name] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(count / total, 3)) for name, count in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "threads": shares(threads, 10),
        "self": shares(leaf, top),
        "inclusive": shares(inclusive, top * 3),
    }
