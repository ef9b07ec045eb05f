"""`ExecRunner`: turn any command line program into an agent, one process per task.

The contract (docs/worker-protocol.md has it in full):

- stdin: the task message and a newline (`AGENTTASKS_MESSAGE_LINES` says how many lines it
  spans), then end of file, so a filter that reads to the end (`cat`, `wc`, `jq`, an LLM tool
  reading its prompt) finishes. With `interactive=True` (`agenttasks worker --interactive`)
  stdin stays open instead, and each answer to an `::input::` question arrives as one more line.
- environment: the worker's own, minus its `AGENTTASKS_*` settings (they hold its credentials),
  plus `AGENTTASKS_TASK_ID`, `AGENTTASKS_AGENT_ID`, `AGENTTASKS_ATTEMPT`, `AGENTTASKS_PRIORITY`,
  `AGENTTASKS_METADATA` (a JSON object) and `AGENTTASKS_MESSAGE_LINES`; and, when the task
  is in a trace, the W3C `TRACEPARENT` (and `TRACESTATE`) of the worker's handling of it, so a
  traced program continues the task's trace.
- stdout: streamed to the task's output as it arrives. Two kinds of line are instructions
  instead: `::input:: PROMPT` asks the client and writes the reply to stdin as one line (only
  when interactive: otherwise it fails the task with INPUT_NOT_SUPPORTED, since nobody could
  read the answer), and `::progress:: PERCENT [TEXT]` reports progress.
- exit 0 completes the task with stdout minus the instruction lines; exit N fails it with code
  EXIT_N and the last 2 KB of stderr; death by a signal fails it with WORKER_ERROR.
- cancel (by the client, a timeout, a lost lease, the worker stopping): SIGTERM to the process
  group, SIGKILL after `grace_seconds`. The command runs in its own session, so everything it
  started goes too, and the runner always reaps it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttasks.observe import tracing
from agenttasks.worker.context import WORKER_ERROR, ReportRejected, TaskContext, TaskFailed

INPUT_PREFIX = "::input::"
INPUT_NOT_SUPPORTED = "INPUT_NOT_SUPPORTED"
"""The failure code of a program that asks a question while it runs without `interactive`."""
MAX_PROMPT_CHARS = 200
PROGRESS_PREFIX = "::progress::"
STDERR_TAIL_BYTES = 2048
READ_CHUNK_BYTES = 64 * 1024
# The server keeps a result of at most 1 MiB: keep the tail of stdout within that (with room for
# the truncation note), rather than lose the whole result of a chatty program.
RESULT_KEEP_BYTES = 1024 * 1024 - 4096
MAX_LINE_CHARS = 16 * 1024
"""A longer line without a newline is passed on in pieces (never taken for an instruction).
With the 64 KiB reads, no line or piece is over 128 KiB of UTF-8 (the server takes 256 KiB)."""
CHUNK_BYTES = 64 * 1024
"""Lines that arrive together go out as one output chunk up to this size."""
GROUP_POLL_SECONDS = 0.05

_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    starts_line: bool
    ends_line: bool


async def _pieces(stream: asyncio.StreamReader) -> AsyncIterator[list[_Piece]]:
    """stdout as lists of lines (whatever one read brought), decoded leniently as UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer, at_start = "", True
    while True:
        chunk = await stream.read(READ_CHUNK_BYTES)
        buffer += decoder.decode(chunk, final=not chunk)
        *lines, buffer = buffer.split("\n")
        pieces = [_Piece(line + "\n", at_start if i == 0 else True, True) for i, line in enumerate(lines)]
        if lines:
            at_start = True
        while len(buffer) >= MAX_LINE_CHARS:
            pieces.append(_Piece(buffer[:MAX_LINE_CHARS], at_start, False))
            buffer, at_start = buffer[MAX_LINE_CHARS:], False
        if not chunk and buffer:
            pieces.append(_Piece(buffer, at_start, True))
        if pieces:
            yield pieces
        if not chunk:
            return


def _instruction(piece: _Piece) -> tuple[str, str] | None:
    """("input", prompt) or ("progress", rest) for an instruction line, else None."""
    if not (piece.starts_line and piece.ends_line):
        return None
    line = piece.text.rstrip("\r\n")
    for kind, prefix in (("input", INPUT_PREFIX), ("progress", PROGRESS_PREFIX)):
        if line.startswith(prefix):
            rest = line[len(prefix) :]
            if rest and not rest[0].isspace():
                return None
            return kind, rest.strip()
    return None


def _progress(rest: str) -> tuple[float, str] | None:
    percent, _, text = rest.partition(" ")
    try:
        value = float(percent)
    except ValueError:
        return None
    if value != value:  # NaN
        return None
    return min(100.0, max(0.0, value)), text.strip()


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count: in a container whose
    PID 1 does not reap orphans they stay forever, and waiting for them would always take the
    whole grace period."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not _PROC.is_dir():
        return True
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _feed(stdin: asyncio.StreamWriter, queue: asyncio.Queue[str]) -> None:
    """Write the queued text to the program's stdin; stop quietly once it closed its end."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while True:
            stdin.write((await queue.get()).encode())
            await stdin.drain()


async def _feed_and_close(stdin: asyncio.StreamWriter, text: str) -> None:
    """Write `text` to the program's stdin, then close it: the end of file is what tells `cat`
    or `wc` the input is complete. A program that exits (or closes stdin) without reading it all
    is not an error: its exit decides the task."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(text.encode())
        await stdin.drain()  # a message larger than the pipe goes as fast as the program reads
    stdin.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stdin.wait_closed()


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Read the stream to its end (so the program never blocks on it), keeping the last bytes."""
    tail = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        tail += chunk
        del tail[:-STDERR_TAIL_BYTES]
    return bytes(tail)


class _Conversation:
    """The stdout side of one run: output, questions, progress, and the text of the result.

    `answers` is the queue feeding stdin, or None when stdin was closed after the message:
    then a question cannot be answered and fails the task."""

    def __init__(self, ctx: TaskContext, answers: asyncio.Queue[str] | None, program: str) -> None:
        self.result_bytes = 0
        self.truncated = False
        self.output_full = False
        self.ctx = ctx
        self.answers = answers
        self.program = program
        self.result: list[str] = []
        self.asking = False

    async def run(self, stdout: asyncio.StreamReader) -> None:
        async for pieces in _pieces(stdout):
            pending: list[str] = []
            for piece in pieces:
                instruction = _instruction(piece)
                progress = _progress(instruction[1]) if instruction and instruction[0] == "progress" else None
                if instruction is None or (instruction[0] == "progress" and progress is None):
                    pending.append(piece.text)
                    continue
                await self._flush(pending)
                if progress is not None:
                    await self.ctx.progress(*progress)
                elif self.answers is None:
                    raise self._cannot_ask(instruction[1])
                else:
                    self.asking = True
                    reply = await self.ctx.ask(instruction[1])
                    self.asking = False
                    self.answers.put_nowait(_one_line(reply) + "\n")
            await self._flush(pending)
        await self._stored(self.ctx.flush())  # all of it stored before the task ends

    def _cannot_ask(self, prompt: str) -> TaskFailed:
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[: MAX_PROMPT_CHARS - 3] + "..."
        return TaskFailed(
            INPUT_NOT_SUPPORTED,
            f"{self.program} asked for input ({INPUT_PREFIX} {prompt}) but runs without --interactive: "
            "its stdin is closed after the message, so it could never read an answer. Run the worker "
            "with --interactive (ExecRunner(..., interactive=True)) for a program that asks questions.",
        )

    async def _flush(self, pending: list[str]) -> None:
        """Send the pending lines as few output chunks as the size bound allows."""
        group: list[str] = []
        size = 0
        for text in pending:
            length = len(text.encode())
            if group and size + length > CHUNK_BYTES:
                await self._send("".join(group))
                group, size = [], 0
            group.append(text)
            size += length
        pending.clear()
        if group:
            await self._send("".join(group))

    async def _send(self, chunk: str) -> None:
        self.result.append(chunk)
        self.result_bytes += len(chunk.encode())
        while self.result_bytes > RESULT_KEEP_BYTES and len(self.result) > 1:  # keep the tail
            self.result_bytes -= len(self.result.pop(0).encode())
            self.truncated = True
        await self._stored(self.ctx.output(chunk))

    async def _stored(self, sending: Coroutine[Any, Any, None]) -> None:
        """Send (or flush) output, unless the task's output is full: then the program runs on
        and its result keeps the tail. Output is queued, so the server's refusal of a chunk
        comes with a later call."""
        if self.output_full:
            sending.close()
            return
        try:
            await sending
        except ReportRejected as rejected:
            if rejected.code != "INVALID_ARGUMENT":
                raise
            self.output_full = True


class _ExitAware(asyncio.subprocess.SubprocessStreamProtocol):
    """create_subprocess_exec's protocol plus an event for the exit itself: in Python 3.11
    `Process.wait()` also waits for every pipe to close, which a grandchild can put off forever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_CHUNK_BYTES, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass(frozen=True, slots=True)
class _Child:
    """One running command: its transport (to close it for sure), exit event and pipes."""

    pid: int
    transport: asyncio.SubprocessTransport
    exited: asyncio.Event
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader


_cleanups: set[asyncio.Task[None]] = set()
"""Cleanups under way, referenced so none is garbage-collected half-way."""


class ExecRunner:
    """A worker handler that runs `command` (no shell) for each task; see the module docstring.

    By default the program gets the message on stdin and then end of file, like any filter.
    `interactive=True` keeps stdin open for the answers to its `::input::` questions instead.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        interactive: bool = False,
        grace_seconds: float = 5.0,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not command:
            raise ValueError("command is empty")
        if grace_seconds < 0:
            raise ValueError("grace_seconds must not be negative")
        self.command = list(command)
        self.interactive = interactive
        self.grace_seconds = grace_seconds
        self.cwd = cwd
        self.env = env

    def __repr__(self) -> str:
        return f"ExecRunner({self.command!r}" + (", interactive=True)" if self.interactive else ")")

    def environment(self, ctx: TaskContext, message_lines: int) -> dict[str, str]:
        """The child's environment: inherited (or `env`), minus AGENTTASKS_* settings, plus the task's."""
        # Passing the inherited environment on to the child is not configuration: Settings stays
        # the one reader of AGENTTASKS_* (and those are exactly what the child must not see).
        base = os.environ if self.env is None else self.env
        env = {k: v for k, v in base.items() if not k.startswith("AGENTTASKS_")}
        env.update(
            AGENTTASKS_TASK_ID=ctx.task_id,
            AGENTTASKS_AGENT_ID=ctx.agent_id,
            AGENTTASKS_ATTEMPT=str(ctx.attempt),
            AGENTTASKS_PRIORITY=str(ctx.priority),
            AGENTTASKS_METADATA=json.dumps(ctx.metadata),
            AGENTTASKS_MESSAGE_LINES=str(message_lines),
        )
        # The W3C convention for handing a trace to a child process (the worker's handling span,
        # or the assignment's context with tracing off here); never an inherited one.
        env.pop("TRACEPARENT", None)
        env.pop("TRACESTATE", None)
        parent, state = tracing.current()
        if parent:
            env["TRACEPARENT"] = parent
            if state:
                env["TRACESTATE"] = state
        return env

    async def __call__(self, ctx: TaskContext) -> str:
        message = ctx.message if ctx.message.endswith("\n") else ctx.message + "\n"
        child = await self._spawn(ctx, message.count("\n"))
        # stdin is fed by its own task so a program that prints before reading never deadlocks us.
        answers: asyncio.Queue[str] | None = None
        if self.interactive:
            answers = asyncio.Queue()
            answers.put_nowait(message)
            feeding = _feed(child.stdin, answers)
        else:
            feeding = _feed_and_close(child.stdin, message)
        feeder = asyncio.create_task(feeding, name=f"agenttasks-stdin-{child.pid}")
        stderr = asyncio.create_task(_tail(child.stderr), name=f"agenttasks-stderr-{child.pid}")
        talk = _Conversation(ctx, answers, self.command[0])
        try:
            await self._converse(child, talk)
        finally:
            await self._finish(child, feeder, stderr)
        return self._outcome(child, talk, stderr)

    async def _spawn(self, ctx: TaskContext, message_lines: int) -> _Child:
        loop = asyncio.get_running_loop()
        pipe = asyncio.subprocess.PIPE
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitAware(loop),
                *self.command,
                stdin=pipe,
                stdout=pipe,
                stderr=pipe,
                cwd=self.cwd,
                env=self.environment(ctx, message_lines),
                start_new_session=True,  # its own process group: a cancel reaches its children too
            )
        except OSError as error:
            raise TaskFailed(WORKER_ERROR, f"cannot run {self.command[0]}: {error.strerror or error}") from None
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # noqa: S101
        return _Child(proc.pid, transport, protocol.exited, proc.stdin, proc.stdout, proc.stderr)

    async def _converse(self, child: _Child, talk: _Conversation) -> None:
        reading = asyncio.create_task(talk.run(child.stdout), name=f"agenttasks-stdout-{child.pid}")
        exited = asyncio.create_task(child.exited.wait(), name=f"agenttasks-exit-{child.pid}")
        try:
            await asyncio.wait({reading, exited}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and not exited.done() and reading.exception() is None:
                # Its stdout closed (`exec >logfile`, say) but the program runs on: its exit is
                # the end of the task, bounded as ever by the task's timeout or a cancel.
                await exited
            if not reading.done():
                # It exited; the rest of its output gets the grace period to arrive...
                await asyncio.wait({reading}, timeout=self.grace_seconds)
            if not reading.done():
                # ...then whatever it left behind holding stdout open is ended, and a question it
                # asked is no longer waited for: nobody is left to read the answer.
                await self._terminate(child)
                if talk.asking:
                    reading.cancel()
                else:
                    await asyncio.wait({reading}, timeout=self.grace_seconds)
                    if not child.stdout.at_eof():  # held open by a process that left the group
                        reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            if not reading.cancelled() and (error := reading.exception()) is not None:
                raise error
        finally:
            for task in (reading, exited):
                task.cancel()
            await asyncio.gather(reading, exited, return_exceptions=True)

    async def _finish(self, child: _Child, feeder: asyncio.Task[None], stderr: asyncio.Task[bytes]) -> None:
        """End the process group and reap the child, even when cancelled again meanwhile: the
        session waits for handlers before it reconnects, so no process may outlive its task."""
        cleanup = asyncio.create_task(self._cleanup(child, feeder, stderr), name=f"agenttasks-reap-{child.pid}")
        _cleanups.add(cleanup)
        cleanup.add_done_callback(_cleanups.discard)
        cancelled = False
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _cleanup(self, child: _Child, feeder: asyncio.Task[None], stderr: asyncio.Task[bytes]) -> None:
        await self._terminate(child)
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        child.stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await child.stdin.wait_closed()
        # A process that left the group (setsid) may still hold stderr; do not wait for it forever.
        await asyncio.wait({stderr}, timeout=self.grace_seconds)
        if not stderr.done():
            stderr.cancel()
            await asyncio.gather(stderr, return_exceptions=True)
        # Closes any pipe such a process still holds; the child itself is already reaped.
        child.transport.close()

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM to the group, SIGKILL after the grace period if anything is left; then reap."""
        pgid = child.pid  # a session leader's group id is its pid
        if child.exited.is_set() and not _group_alive(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_seconds

        def lingering() -> bool:
            return not child.exited.is_set() or _group_alive(pgid)

        # Polled: nothing signals the exit of a grandchild (it is not our child to wait for).
        while loop.time() < deadline and lingering():  # noqa: ASYNC110
            await asyncio.sleep(GROUP_POLL_SECONDS)
        if lingering():
            _signal_group(pgid, signal.SIGKILL)
        await child.exited.wait()

    def _outcome(self, child: _Child, talk: _Conversation, stderr: asyncio.Task[bytes]) -> str:
        code = child.transport.get_returncode()
        if code == 0:
            text = "".join(talk.result)
            return f"[output truncated: the last {len(text.encode())} bytes follow]\n{text}" if talk.truncated else text
        tail = ""
        if stderr.done() and not stderr.cancelled():
            tail = stderr.result().decode("utf-8", errors="replace").lstrip("\ufffd").strip()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            raise TaskFailed(WORKER_ERROR, f"{self.command[0]} was killed by {name}" + (f": {tail}" if tail else ""))
        raise TaskFailed(f"EXIT_{code}", tail or f"{self.command[0]} exited with status {code}")
