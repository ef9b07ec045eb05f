"""`agenttasks worker` as a person runs it: a real `serve`, the real worker command and the real
client commands, with filter-style programs that read their stdin to its end."""

from __future__ import annotations

import json
import sys
import time

import pytest

from .support import REPO, START_TIMEOUT, Cli, Server, Spawned, ok, one_line

PY = sys.executable


def start_worker(server: Server, cli: Cli, name: str, *command: str) -> tuple[str, Spawned]:
    """A new agent, a worker key scoped to it, and `agenttasks worker AGENT -- COMMAND` serving it
    (connected by the time this returns)."""
    agent = one_line(ok(cli("agents", "create", name)))
    key = one_line(ok(cli("keys", "create", "--tenant", "default", "--role", "worker", "--agent", agent)))
    env = {"AGENTTASKS_SERVER": server.address, "AGENTTASKS_API_KEY": key}
    worker = Spawned("worker", agent, "--", *command, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while "connected to" not in worker.stderr:
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"the worker did not connect\nstdout:\n{worker.stdout}\nstderr:\n{worker.stderr}")
        time.sleep(0.02)
    return agent, worker


def stopped(worker: Spawned) -> str:
    """SIGTERM; the worker's whole output once it exited cleanly."""
    code = worker.stop()
    assert code == 0, f"exit {code}\nstderr:\n{worker.stderr}"
    assert "Traceback" not in worker.stderr, worker.stderr
    return worker.stdout + worker.stderr


@pytest.mark.timeout(90)
def test_cat_as_an_agent_completes_its_tasks(server: Server, cli: Cli) -> None:
    agent, worker = start_worker(server, cli, "cat", "cat")
    try:
        task = one_line(ok(cli("submit", agent, "meow\npurr")))
        watched = ok(cli("watch", task, "--after", "1"))  # exit 0: the task completed
        # The output as it came, then the result on the completed line without a blank after it.
        assert watched.endswith("meow\npurr\n[end] task finished; task completed\n"), watched
        assert "completed: meow\npurr\n[end]" in watched, watched
        status = json.loads(ok(cli("status", task, "--json")))
        assert status["status"] == "completed"
        assert status["result"]["text"] == "meow\npurr\n"
    finally:
        said = stopped(worker)
    assert worker.stdout == "", worker.stdout  # the worker's own lines all go to stderr
    connected = [line for line in said.splitlines() if "connected to" in line]
    assert len(connected) == 1, said
    assert connected[0].startswith(f"agenttasks worker: connected to {server.address} as worker "), connected
    assert connected[0].endswith(f"(agent {agent}, capacity 1)"), connected


@pytest.mark.timeout(90)
def test_the_shout_example_runs_as_its_readme_says(server: Server, cli: Cli) -> None:
    agent, worker = start_worker(server, cli, "shouter", PY, str(REPO / "examples" / "shout_agent.py"))
    try:
        out = ok(cli("submit", agent, "hello, queue", "--watch"))
    finally:
        stopped(worker)
    assert "HELLO, QUEUE!" in out, out
    assert out.rstrip().endswith("[end] task finished; task completed"), out
