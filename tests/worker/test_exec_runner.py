"""The exec runner with real processes against the real service, and `agenttasks worker` as a
real process: the stdin/env/stdout contract (stdin closed after the message by default, kept open
for answers when interactive), exit codes, and that a cancel (or timeout, or a stopping worker)
kills the whole process group."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.worker import ExecRunner, Worker
from agenttasks.worker.exec_runner import INPUT_NOT_SUPPORTED
from tests.worker.conftest import (
    AGENTTASKS,
    ASK_AGENT,
    WAIT_SECONDS,
    StartWorker,
    Tasks,
    clean_env,
    eventually,
    process_gone,
)

pytestmark = pytest.mark.asyncio

PY = sys.executable

ENV_PROGRAM = """
import json, os, sys
lines = int(os.environ["AGENTTASKS_MESSAGE_LINES"])
message = "".join(sys.stdin.readline() for _ in range(lines))
env = {k: v for k, v in os.environ.items() if k.startswith("AGENTTASKS_")}
print(json.dumps({"message": message, "env": env}))
"""

CHATTY_PROGRAM = """
for i in range(2000):
    print(f"line {i}")
print("::progress:: lots")
print("x" * 100000)
print("\u00e9" * 70000)
print("::progress:: 250 over the top")
print("::progress::nospace")
"""

FAILING_PROGRAM = """
import sys
print("partial output")
sys.stderr.write("noise " * 1000 + "\\nthe real reason\\n")
sys.exit(3)
"""

# Prints its pid and a grandchild's, then sleeps; with an argument both ignore SIGTERM (the
# grandchild inherits the ignored disposition), so only SIGKILL ends them.
FAMILY_PROGRAM = """
import os, signal, subprocess, sys, time
if len(sys.argv) > 1:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL)
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(600)
"""

# Exits at once, leaving a grandchild that still holds stdout open.
LEAVES_STDOUT_OPEN = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"done {grandchild.pid}", flush=True)
"""


async def pids_of(tasks: Tasks, task_id: str) -> list[int]:
    task = await tasks.wait_for(task_id, "the program to print its pids", lambda t: "pids " in t.output)
    return [int(p) for p in task.output.split("pids ", 1)[1].split()[:2]]


async def test_ask_agent_end_to_end_with_an_input_round_trip(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, str(ASK_AGENT)], interactive=True))
    task_id = await tasks.submit("What is 2+2?")

    waiting = await tasks.wait(task_id, "awaiting_input")
    assert waiting.input_prompt == "What is your name?"
    assert (waiting.progress.percent, waiting.progress.text) == (50, "waiting for a name")
    assert waiting.output == f"task {task_id} (attempt 1)\n"

    await tasks.send(task_id, "Ada")
    task = await tasks.wait(task_id, "completed")
    expected = f"task {task_id} (attempt 1)\nHello, Ada! You asked: What is 2+2?\n"
    assert task.result.text == expected
    assert task.output == expected
    assert (task.progress.percent, task.progress.text) == (100, "done")


UPPER = "import sys; print(sys.stdin.read().upper())"
BIG_MESSAGE = "".join(f"line {i:06d} of a message larger than any pipe buffer\n" for i in range(4000))
"""About 220 KB (the server takes 256 KiB): more than three times Linux's 64 KiB pipe buffer."""


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["cat"], "hello agent\n"), (["wc", "-c"], "12\n"), ([PY, "-c", UPPER], "HELLO AGENT\n\n")],
    ids=["cat", "wc", "python-read"],
)
async def test_filters_that_read_stdin_to_its_end_complete(
    start_worker: StartWorker, tasks: Tasks, command: list[str], expected: str
) -> None:
    """stdin is closed after the message by default, so a program reading to end of file ends."""
    await start_worker(ExecRunner(command))
    task = await tasks.wait(await tasks.submit("hello agent"), "completed", "failed")
    assert (task.status, task.result.text) == ("completed", expected), task.error.message
    assert task.output == expected


async def test_a_filter_gets_a_multi_line_message_and_its_line_count(start_worker: StartWorker, tasks: Tasks) -> None:
    program = "import os, sys; print(os.environ['AGENTTASKS_MESSAGE_LINES'], repr(sys.stdin.read()))"
    await start_worker(ExecRunner([PY, "-c", program]))
    task = await tasks.wait(await tasks.submit("one\ntwo\n\nfour"), "completed", "failed")
    assert task.result.text == "4 'one\\ntwo\\n\\nfour\\n'\n", task.error.message


async def test_a_program_with_no_output_completes_with_an_empty_result(start_worker: StartWorker, tasks: Tasks) -> None:
    """It reads its input to the end (`true` would not even wait for that) and prints nothing."""
    await start_worker(ExecRunner([PY, "-c", "import sys; sys.stdin.read()"]))
    task = await tasks.wait(await tasks.submit("ignored"), "completed", "failed")
    assert (task.status, task.result.text, task.output) == ("completed", "", ""), task.error.message


async def test_a_message_larger_than_the_pipe_reaches_a_filter_whole(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner(["cat"]))
    task = await tasks.wait(await tasks.submit(BIG_MESSAGE), "completed", "failed")
    assert task.status == "completed", task.error.message
    assert task.result.text == BIG_MESSAGE


async def test_a_program_that_never_reads_a_large_message_still_completes(
    start_worker: StartWorker, tasks: Tasks
) -> None:
    """Its stdin breaks (EPIPE) under the message: not an error, its exit decides. (A guard for
    the feeder that closes stdin; the runner that kept stdin open passed it too.)"""
    await start_worker(ExecRunner([PY, "-c", "import sys; sys.stdin.close(); print('done')"]))
    task = await tasks.wait(await tasks.submit(BIG_MESSAGE), "completed", "failed")
    assert (task.status, task.result.text) == ("completed", "done\n"), task.error.message


@pytest.mark.parametrize("then", ["reads-eof", "waits"])
async def test_a_question_without_interactive_fails_the_task_naming_the_option(
    start_worker: StartWorker, tasks: Tasks, then: str
) -> None:
    """ask_agent.py reads the closed stdin and exits 3; the other program would wait forever.
    Either way the task fails at once with the reason, not with the exit status or a timeout."""
    waits = "import time\nprint('::input:: Which year?', flush=True)\ntime.sleep(600)"
    command = [PY, str(ASK_AGENT)] if then == "reads-eof" else [PY, "-c", waits]
    await start_worker(ExecRunner(command, grace_seconds=0.5))
    task = await tasks.wait(await tasks.submit("hi"), "failed", "awaiting_input", "completed")
    assert task.status == "failed", task
    assert task.error.code == INPUT_NOT_SUPPORTED
    prompt = "What is your name?" if then == "reads-eof" else "Which year?"
    assert f"asked for input (::input:: {prompt}) but runs without --interactive" in task.error.message
    assert "Run the worker with --interactive" in task.error.message


async def test_stdin_and_environment(start_worker: StartWorker, tasks: Tasks) -> None:
    # The worker's own AGENTTASKS_* settings (its key!) must not reach the program.
    await start_worker(ExecRunner([PY, "-c", ENV_PROGRAM], env=clean_env(AGENTTASKS_API_KEY="worker-secret")))
    task_id = await tasks.submit("line one\nline two", priority=7, metadata={"team": "search", "n": 3})
    task = await tasks.wait(task_id, "completed")

    seen = json.loads(task.result.text)
    assert seen["message"] == "line one\nline two\n"
    env = seen["env"]
    metadata = json.loads(env.pop("AGENTTASKS_METADATA"))
    assert metadata == {"team": "search", "n": 3}
    assert isinstance(metadata["n"], int)  # not 3.0, although a Struct carries every number as a double
    assert env == {
        "AGENTTASKS_TASK_ID": task_id,
        "AGENTTASKS_AGENT_ID": tasks.agent_id,
        "AGENTTASKS_ATTEMPT": "1",
        "AGENTTASKS_PRIORITY": "7",
        "AGENTTASKS_MESSAGE_LINES": "2",
    }


async def test_stdout_is_output_and_result_and_instructions_are_not(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, "-c", CHATTY_PROGRAM]))
    task = await tasks.wait(await tasks.submit(), "completed")

    expected = "".join(f"line {i}\n" for i in range(2000))
    # Not instructions: a progress line without a number, and a prefix without a space after it.
    expected += "::progress:: lots\n" + "x" * 100000 + "\n" + "\u00e9" * 70000 + "\n::progress::nospace\n"
    assert task.result.text == expected
    assert task.output == expected
    assert (task.progress.percent, task.progress.text) == (100, "over the top")


async def test_a_non_zero_exit_fails_with_the_stderr_tail(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, "-c", FAILING_PROGRAM]))
    task = await tasks.wait(await tasks.submit(), "failed")

    assert task.error.code == "EXIT_3"
    assert task.error.message.endswith("noise \nthe real reason")
    assert len(task.error.message.encode()) <= 2048
    assert task.output == "partial output\n"


async def test_death_by_a_signal_is_a_worker_error(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]))
    task = await tasks.wait(await tasks.submit(), "failed")
    assert task.error.code == "WORKER_ERROR"
    assert "killed by SIGKILL" in task.error.message


async def test_a_command_that_cannot_start_fails_the_task(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner(["/nonexistent/agent-program"]))
    task = await tasks.wait(await tasks.submit(), "failed")
    assert task.error.code == "WORKER_ERROR"
    assert task.error.message.startswith("cannot run /nonexistent/agent-program")


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["sigterm", "sigkill-after-grace"])
async def test_cancel_kills_the_process_and_its_children(
    start_worker: StartWorker, tasks: Tasks, ignores_sigterm: bool
) -> None:
    command = [PY, "-c", FAMILY_PROGRAM, *(["ignore-sigterm"] if ignores_sigterm else [])]
    await start_worker(ExecRunner(command, grace_seconds=0.5))
    task_id = await tasks.submit()
    child, grandchild = await pids_of(tasks, task_id)
    assert not process_gone(child) and not process_gone(grandchild)

    await tasks.cancel(task_id)
    await eventually(lambda: process_gone(child) and process_gone(grandchild), "both processes to die")
    assert (await tasks.get(task_id)).status == "cancelled"


async def test_a_timeout_kills_the_process(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, "-c", FAMILY_PROGRAM], grace_seconds=0.5))
    task_id = await tasks.submit(timeout_override=1)
    child, grandchild = await pids_of(tasks, task_id)

    task = await tasks.wait(task_id, "failed")
    assert task.error.code == "TIMEOUT"
    await eventually(lambda: process_gone(child) and process_gone(grandchild), "both processes to die")


async def test_a_stopping_worker_kills_its_processes(start_worker: StartWorker, tasks: Tasks) -> None:
    worker = await start_worker(ExecRunner([PY, "-c", FAMILY_PROGRAM], grace_seconds=0.5))
    task_id = await tasks.submit()
    child, grandchild = await pids_of(tasks, task_id)

    await worker.__aexit__(None, None, None)
    # Stopping waits for the handlers, and the runner reaps its child before it returns.
    assert process_gone(child)
    await eventually(lambda: process_gone(grandchild), "the grandchild to die")


async def test_a_grandchild_holding_stdout_does_not_hold_the_task(start_worker: StartWorker, tasks: Tasks) -> None:
    await start_worker(ExecRunner([PY, "-c", LEAVES_STDOUT_OPEN], grace_seconds=0.2))
    task = await tasks.wait(await tasks.submit(), "completed")
    assert task.result.text.startswith("done ")
    grandchild = int(task.result.text.split()[1])
    await eventually(lambda: process_gone(grandchild), "the grandchild to be ended")


async def test_runner_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        ExecRunner([])
    with pytest.raises(ValueError, match="grace"):
        ExecRunner(["true"], grace_seconds=-1)


# --- `agenttasks worker` as a real process ---

CliRun = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest_asyncio.fixture
async def worker_process(service: Service) -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    """Starts `agenttasks worker ARGS...` against the test service; kills it at the end."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str, api_key: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *AGENTTASKS,
            "worker",
            *args,
            env=clean_env(AGENTTASKS_SERVER=service.address, AGENTTASKS_API_KEY=api_key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def connect_line(proc: asyncio.subprocess.Process) -> str:
    """The worker's stderr up to and including its connect line (the last line returned)."""
    assert proc.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(WAIT_SECONDS):
        while "connected to" not in (line := (await proc.stderr.readline()).decode()):
            assert line, "the worker ended before it connected:\n" + "".join(seen)
            seen.append(line)
    return "".join(seen) + line


async def finished(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(WAIT_SECONDS):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(90)
async def test_cli_worker_end_to_end(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str, tasks: Tasks
) -> None:
    proc = await worker_process(
        tasks.agent_id,
        *("--capacity", "2", "--name", "cli-test", "--interactive"),
        *("--", PY, str(ASK_AGENT)),
        api_key=worker_key,
    )
    connected = (await connect_line(proc)).splitlines()[-1]
    assert connected.startswith("agenttasks worker: connected to "), connected
    assert connected.endswith(f"(agent {tasks.agent_id}, capacity 2)"), connected

    task_id = await tasks.submit("Are you there?")
    assert (await tasks.wait(task_id, "awaiting_input")).input_prompt == "What is your name?"
    await tasks.send(task_id, "Grace")
    task = await tasks.wait(task_id, "completed")
    assert task.result.text.endswith("Hello, Grace! You asked: Are you there?\n")

    proc.send_signal(signal.SIGTERM)
    code, out, err = await finished(proc)
    assert code == 0, err
    assert "agenttasks worker: stopped" in err
    assert "Traceback" not in err
    assert out == "", out  # every line of the worker's own goes to stderr


async def test_cli_worker_says_it_connected_once_on_stderr(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str, tasks: Tasks
) -> None:
    """One connect line in one format (the worker's log line), not a second one on stdout."""
    proc = await worker_process(tasks.agent_id, "--", "head", "-n", "1", api_key=worker_key)
    before = await connect_line(proc)
    task = await tasks.wait(await tasks.submit("meow\npurr"), "completed", "failed")
    assert (task.status, task.result.text) == ("completed", "meow\n"), task.error.message

    proc.send_signal(signal.SIGTERM)
    code, out, err = await finished(proc)
    assert code == 0, err
    said = (before + out + err).splitlines()
    assert len([line for line in said if "connected to" in line]) == 1, said


async def test_cli_worker_stops_on_sigint_killing_its_commands(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str, tasks: Tasks
) -> None:
    """Ctrl-C: the running command and its child are ended, the worker exits 0, and the server
    puts the task back in the queue for another attempt."""
    proc = await worker_process(
        tasks.agent_id, "--grace-seconds", "0.5", "--", PY, "-c", FAMILY_PROGRAM, api_key=worker_key
    )
    await connect_line(proc)
    task_id = await tasks.submit()
    child, grandchild = await pids_of(tasks, task_id)

    proc.send_signal(signal.SIGINT)
    code, _, err = await finished(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert process_gone(child)
    await eventually(lambda: process_gone(grandchild), "the grandchild to die")
    task = await tasks.wait(task_id, "queued")
    assert task.status_reason == "LEASE_LOST"


async def test_cli_worker_help() -> None:
    proc = await asyncio.create_subprocess_exec(
        *AGENTTASKS, "worker", "--help", env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    code, out, _ = await finished(proc)
    assert code == 0
    for flag in ("AGENT_ID", "COMMAND", "--capacity", "--grace-seconds", "--name", "--server", "--api-key"):
        assert flag.lower() in out.lower(), flag
    # Both stdin modes are explained, with an example of each.
    assert "stdin, two modes:" in out
    assert "then end of file" in out and "stdin stays open after the message" in out
    assert "-- python3 examples/shout_agent.py" in out
    assert "--interactive -- python3 examples/ask_agent.py" in out


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or line.startswith("agenttasks:")]
    assert len(errors) == 1, err
    return errors[0]


async def test_cli_worker_without_a_command(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str, agent_id: str
) -> None:
    code, _, err = await finished(await worker_process(agent_id, api_key=worker_key))
    assert code == 2
    assert "COMMAND" in error_line(err)


async def test_cli_worker_with_a_command_that_does_not_exist(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str, agent_id: str
) -> None:
    code, _, err = await finished(await worker_process(agent_id, "--", "/nonexistent/agent", api_key=worker_key))
    assert code == 2
    assert error_line(err) == "agenttasks: command not found or not executable: /nonexistent/agent"


async def test_cli_worker_for_an_unknown_agent(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], worker_key: str
) -> None:
    unknown = "0190f0f0-0000-7000-8000-000000000000"
    code, _, err = await finished(await worker_process(unknown, "--", PY, str(ASK_AGENT), api_key=worker_key))
    assert code == 1
    line = error_line(err)
    assert line.startswith("agenttasks: the server refused the worker: NOT_FOUND"), line


@pytest.mark.parametrize("kind", ["bogus", "client"])
async def test_cli_worker_with_a_bad_key(
    worker_process: Callable[..., Awaitable[asyncio.subprocess.Process]], service: Service, agent_id: str, kind: str
) -> None:
    key = await create_api_key(service.store, "default", Role.CLIENT) if kind == "client" else "atk_not_a_key"
    code, _, err = await finished(await worker_process(agent_id, "--", PY, str(ASK_AGENT), api_key=key))
    assert code == 1
    expected = "PERMISSION_DENIED" if kind == "client" else "UNAUTHENTICATED"
    assert expected in error_line(err)


async def test_sdk_worker_and_runner_compose(service: Service, worker_key: str, tasks: Tasks) -> None:
    """The README's two-liner: a Worker with an ExecRunner, used as a context manager."""
    runner = ExecRunner([PY, "-c", "import sys; print(sys.stdin.readline().strip().upper())"])
    async with Worker(service.address, worker_key, tasks.agent_id, runner) as worker:
        await asyncio.wait_for(worker.wait_connected(), WAIT_SECONDS)
        task = await tasks.wait(await tasks.submit("shout this"), "completed")
    assert task.result.text == "SHOUT THIS\n"


async def test_a_program_that_closes_stdout_runs_on_to_its_exit(start_worker: StartWorker, tasks: Tasks) -> None:
    program = "echo start; exec >/dev/null; sleep 1; echo finished >&2; exit 0"
    await start_worker(ExecRunner(["sh", "-c", program]))
    task = await tasks.wait(await tasks.submit("go"), "completed", "failed")
    assert (task.status, task.result.text) == ("completed", "start\n"), task.error.message


async def test_a_chatty_program_keeps_the_tail_of_its_output_as_result(start_worker: StartWorker, tasks: Tasks) -> None:
    program = "import sys\nfor i in range(30000): print(f'line {i:05d} ' + 'x' * 40)\nprint('the end')"
    await start_worker(ExecRunner([PY, "-c", program]))
    task = await tasks.wait(await tasks.submit("talk"), "completed", "failed")
    assert task.status == "completed", task.error.message
    assert task.result.text.startswith("[output truncated") and task.result.text.endswith("the end\n")
    assert len(task.result.text.encode()) <= 1024 * 1024
