"""`agenttasks worker AGENT_ID [--interactive] -- COMMAND [ARGS...]`: serve an agent's tasks with a
command line program, one process per task (the exec runner; docs/worker-protocol.md has its
contract).

It logs to stderr: one line once connected (again after each reconnect), the reconnections and
failed tasks. It stops cleanly on SIGTERM or SIGINT: running commands get SIGTERM (SIGKILL after
the grace period) and the server requeues their tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
from typing import TYPE_CHECKING

from agenttasks.cli.client import CliError
from agenttasks.core.dispatch import MAX_CAPACITY
from agenttasks.observe import logs, tracing
from agenttasks.settings import Settings

if TYPE_CHECKING:
    from agenttasks.worker import Worker

HELP = "Serve an agent's tasks by running COMMAND once per task (give it after '--')."
USAGE_HINT = "usage: agenttasks worker AGENT_ID [--capacity N] [--interactive] -- COMMAND [ARGS...]"
EPILOG = """\
stdin, two modes:
  by default       COMMAND reads the task's message on stdin, then end of file, like any
                   filter: 'cat', 'wc -c', 'jq .', a script that reads its prompt to the end.
                   Its stdout is the task's output and, on exit 0, its result.
  --interactive    stdin stays open after the message: a '::input:: PROMPT' line on stdout
                   asks the client, and the answer arrives on stdin as one more line. Without
                   --interactive such a line fails the task (INPUT_NOT_SUPPORTED).

examples:
  agenttasks worker AGENT_ID -- python3 examples/shout_agent.py
  agenttasks worker AGENT_ID --interactive -- python3 examples/ask_agent.py

stdout lines '::progress:: PERCENT [TEXT]' report progress; exit N > 0 fails the task with
EXIT_N and the end of stderr. docs/worker-protocol.md has the whole contract.
"""


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_CAPACITY:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_CAPACITY}, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The worker command's arguments (client connection flags included, but no --json), and
    the help's account of the two stdin modes."""
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--server", help="gRPC address of the service (env AGENTTASKS_SERVER; default 127.0.0.1:50051)")
    p.add_argument("--api-key", help="a worker (or admin) API key (env AGENTTASKS_API_KEY)")
    p.add_argument("agent_id", help="the agent whose tasks to serve")
    p.add_argument("--capacity", type=_capacity, default=1, help="tasks to run at once (default 1)")
    p.add_argument(
        "--grace-seconds",
        type=_seconds,
        default=5.0,
        help="on cancel, how long COMMAND has after SIGTERM before SIGKILL (default 5)",
    )
    p.add_argument("--name", help="a name for this worker in the server's logs (default hostname:pid)")
    p.add_argument(
        "--interactive",
        action="store_true",
        help="keep COMMAND's stdin open after the message, for the answers to its '::input::' "
        "questions (default: close it, so filters that read to the end finish)",
    )
    p.add_argument(
        "command",
        nargs="+",
        metavar="COMMAND",
        help="the program to run per task and its arguments, after '--'; see docs/worker-protocol.md",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point from `agenttasks.cli.main`."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise CliError("no credentials: pass --api-key or set AGENTTASKS_API_KEY (a key with role worker)")
    command: list[str] = args.command
    if not command or not command[0]:
        raise CliError(f"missing COMMAND; {USAGE_HINT}", exit_code=2)
    if shutil.which(command[0]) is None:
        raise CliError(f"command not found or not executable: {command[0]}", exit_code=2)
    if settings.log_format == "json":
        logs.configure("json", settings.log_level, access=False)
    else:
        level = settings.log_level.upper()
        logging.basicConfig(level=level, format="agenttasks worker: %(message)s", stream=sys.stderr)
    from agenttasks.worker import ConnectRefused, ExecRunner, Worker  # only when it runs: a heavy stack

    worker = Worker(
        server=settings.server,
        api_key=settings.api_key.get_secret_value(),
        agent_id=args.agent_id,
        handler=ExecRunner(command, interactive=args.interactive, grace_seconds=args.grace_seconds),
        capacity=args.capacity,
        name=args.name,
    )
    tracing.setup_from_env("agenttasks-worker", force=settings.tracing)
    try:
        asyncio.run(_serve(worker))
    except ConnectRefused as refused:
        raise CliError(f"the server refused the worker: {refused}") from None
    finally:
        tracing.shutdown()  # exports the spans still buffered
    logs.say("agenttasks worker: stopped")
    return 0


async def _serve(worker: Worker) -> None:
    """Run the worker until SIGTERM or SIGINT. The worker logs its own connect line (on stderr,
    with its other log lines), so nothing is printed here."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
