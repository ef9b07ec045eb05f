#!/usr/bin/env python3
"""A filter-style agent for `agenttasks worker`: it reads the task's message to the end and
answers it in capitals.

    agenttasks worker AGENT_ID -- python3 examples/shout_agent.py

By default the exec runner writes the message to stdin and then closes it, so a program that
reads stdin to its end (this one, `cat`, `wc`, `jq`, an LLM command line tool reading its
prompt) works unchanged: whatever it prints is the task's output, and exit 0 completes the task
with it. No questions here; a program that asks them needs `--interactive` (see ask_agent.py).
"""

from __future__ import annotations

import sys


def main() -> int:
    message = sys.stdin.read()  # the whole message: stdin ends after it
    if not message.strip():
        print("nothing to shout: the message is empty", file=sys.stderr)
        return 2
    print("::progress:: 50 shouting", flush=True)
    print(message.rstrip("\n").upper() + "!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
