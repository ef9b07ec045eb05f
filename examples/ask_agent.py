#!/usr/bin/env python3
"""A tiny agent for `agenttasks worker`: it asks the client for a name and greets them.

    agenttasks worker AGENT_ID --interactive -- python3 examples/ask_agent.py

It asks a question, so it needs `--interactive`: without it the runner closes stdin after the
message, and the `::input::` line fails the task (INPUT_NOT_SUPPORTED) instead of waiting for
an answer the program could never read. (shout_agent.py is the plain, filter-style kind.)

It speaks the exec runner's contract (docs/worker-protocol.md) and nothing else: no network, no
model. The task message arrives on stdin (AGENTTASKS_MESSAGE_LINES lines of it: stdin stays open
after it, so read exactly those), every stdout line becomes task output, `::progress::` and
`::input::` lines are instructions to the runner, and the answer to a question comes back as one
line on stdin. Exit 0 completes the task.
"""

from __future__ import annotations

import os
import sys


def say(line: str) -> None:
    # stdout is a pipe, so Python would buffer it: flush, or the runner sees nothing until exit.
    print(line, flush=True)


def main() -> int:
    lines = int(os.environ.get("AGENTTASKS_MESSAGE_LINES", "1"))
    message = "".join(sys.stdin.readline() for _ in range(lines)).rstrip("\n")
    say("::progress:: 10 reading the task")
    say(f"task {os.environ.get('AGENTTASKS_TASK_ID', '?')} (attempt {os.environ.get('AGENTTASKS_ATTEMPT', '?')})")
    say("::progress:: 50 waiting for a name")
    say("::input:: What is your name?")
    reply = sys.stdin.readline()
    if not reply:
        print("no answer: stdin was closed", file=sys.stderr)
        return 3
    say("::progress:: 100 done")
    say(f"Hello, {reply.strip()}! You asked: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
