"""The A2A Python SDK on the end-to-end workload: N tasks sent as JSON-RPC `SendMessage` (the
1.0 name of `message/send`), 64 in flight, to its server process, whose executor completes each
at once. A blocking SendMessage answers when its task has completed, so throughput is N over the
time from the first send to the last answer, counting the tasks it completed."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys

from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc
from bench.rest import Connection
from bench.workloads.common import MESSAGE, window

TITLE = "A2A SDK (SQLite task store), end to end"
HEADERS = {"A2A-Version": "1.0"}
NEEDED = ("a2a", "sqlalchemy", "aiosqlite", "starlette", "uvicorn")
# A peer that fails more of the calls than this did not run the workload; fewer are its own
# occasional errors under load, reported beside its figure.
PEER_ERROR_SHARE = 0.01


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


async def a2a_peer(ctx: Context) -> list[Outcome]:
    if missing := _missing():
        reason = f"not installed: {', '.join(missing)}: pip install 'a2a-sdk[sqlite,http-server]' uvicorn"
        return [Outcome("a2a", TITLE, status="skipped", reason=reason)]
    plan = ctx.plan
    n = plan.tasks
    workdir = ctx.scratch("a2a")
    command = [sys.executable, "-m", "bench.peers.a2a_server", "--db", str(workdir / "a2a.db")]
    ids = itertools.count()
    async with Proc("a2a-server", command, workdir) as server:
        url = (await server.wait_for_line(r"a2a listening on (\S+)")).group(1)
        connections = [Connection(url) for _ in range(plan.concurrency)]
        host = f"{connections[0].host}:{connections[0].port}"

        async def send(slot: int) -> None:
            number = next(ids)
            message = {"messageId": f"m{number}", "role": "ROLE_USER", "parts": [{"text": MESSAGE}]}
            body = {"jsonrpc": "2.0", "id": number, "method": "SendMessage", "params": {"message": message}}
            _, answer = await connections[slot].send(Connection.request("POST", "/", host, HEADERS, body))
            state = json.loads(answer).get("result", {}).get("task", {}).get("status", {}).get("state")
            if state != "TASK_STATE_COMPLETED":
                raise RuntimeError(f"SendMessage answered {answer[:300]!r}")

        try:
            await send(0)  # ready, tables created
            async with window(ctx, {"server": server.pid}) as usage:
                result = await loadgen.closed_loop(
                    send, concurrency=plan.concurrency, seconds=plan.limit_seconds, max_calls=n
                )
        finally:
            for connection in connections:
                await connection.close()
    ctx.discard(workdir)
    outcome = Outcome(
        "a2a",
        TITLE,
        load=f"{n} blocking SendMessage calls, {plan.concurrency} in flight, one server process (uvicorn)",
        metrics={**result.metrics(), "tasks": n, **usage.metrics},
        details={**usage.details, "first_error": result.first_error},
    )
    if result.calls + result.errors != n or result.errors > n * PEER_ERROR_SHARE:
        outcome.status = "failed"
        outcome.reason = f"{result.calls} of {n} completed, {result.errors} errors: {result.first_error}"
    elif result.errors:
        # The SDK's own store gives up now and then under this load ("database is locked" from
        # SQLAlchemy over aiosqlite): its rate counts only the tasks it completed.
        outcome.reason = f"{result.errors} of {n} calls failed in the peer itself: {result.first_error[:120]}"
    return [outcome]
