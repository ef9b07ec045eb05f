"""The Node.js client (clients/node/smoke.js) drives the real service: a task submitted from Node
is taken by a worker, watched event by event to completion, and another task is cancelled.

The worker holds back its reports until Node has printed the watch's snapshot, so the watched
events are the same on every run (no race between the worker and the watcher).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import task_service_pb2_grpc
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import Api

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENT_DIR = ROOT / "clients" / "node"
SMOKE = CLIENT_DIR / "smoke.js"
LINE_SECONDS = 30


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def node() -> str:
    """The node binary; skips (or fails under CI, which must run this) when node is not set up.
    Requested first, so a skip comes before the service starts."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed (Node.js 18+ is needed for clients/node)"
    elif not (CLIENT_DIR / "node_modules").is_dir():
        missing = "clients/node/node_modules is missing: run npm ci --prefix clients/node"
    if missing is not None:
        if in_ci():
            pytest.fail(f"{missing}; CI must run the Node.js client (.ci/run installs it)")
        pytest.skip(missing)
    assert node is not None
    return node


async def read_line(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), LINE_SECONDS)
    return line.decode()


async def run_smoke(node: str, env: dict[str, str], worker: RawWorker) -> tuple[int, list[str], str]:
    """Run smoke.js, serving its first task with `worker`; (exit code, stdout lines, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SMOKE),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())
    lines: list[str] = []
    try:
        # Node submits, then watches: wait for the snapshot before the worker reports anything.
        while not lines or not lines[-1].startswith("event snapshot "):
            line = await read_line(proc.stdout)
            assert line, f"smoke.js ended before the watch began: {''.join(lines)}{(await stderr).decode()}"
            lines.append(line)
        assignment = await worker.next_assignment()
        assert assignment.task.message == "smoke: complete me"
        for report in (
            {"progress": wpb.ReportProgress(task=ref(assignment), percent=50, text="halfway")},
            {"output": wpb.AppendOutput(task=ref(assignment), chunk="hello from the worker")},
            {"complete": wpb.CompleteTask(task=ref(assignment), text="smoke done")},
        ):
            ack = await worker.send(**report)
            assert ack.code == 0, ack
        while line := await read_line(proc.stdout):
            lines.append(line)
        returncode = await asyncio.wait_for(proc.wait(), LINE_SECONDS)
        return returncode, lines, (await stderr).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await stderr


@pytest.mark.asyncio
async def test_node_client_submits_watches_to_completion_and_cancels(
    node: str, service: Service, client: Api, agent_id: str
) -> None:
    node_key = await create_api_key(service.store, "default", Role.CLIENT)
    worker_key = await create_api_key(service.store, "default", Role.WORKER)
    env = {**os.environ, "AGENTTASKS_SERVER": service.address, "AGENTTASKS_API_KEY": node_key, "AGENT_ID": agent_id}
    worker = await RawWorker(service.address, worker_key, agent_id).start()
    try:
        returncode, lines, errors = await run_smoke(node, env, worker)
    finally:
        await worker.close()

    assert returncode == 0, f"smoke.js exited {returncode}: {errors}\n{''.join(lines)}"
    summary = json.loads(lines[-1])
    assert summary["ok"] is True

    # The watched events, as printed and as summarised: the snapshot, the start of the run if
    # the snapshot came before it, the worker's reports in order, and the end after completion.
    events = [(e["type"], e["sequence"], e["status"]) for e in summary["completed"]["events"]]
    printed = [line.split() for line in lines if line.startswith("event ")]
    assert [["event", t, f"sequence={s}", f"status={st}"] for t, s, st in events] == printed
    kind, first_sequence, first_status = events[0]
    assert kind == "snapshot"
    expected = [("status", "running")] if first_status == "queued" else []
    expected += [("progress", "running"), ("output", "running"), ("status", "completed"), ("end", "completed")]
    assert [(t, st) for t, _, st in events[1:]] == expected
    sequences = [int(s) for _, s, _ in events[:-1]]  # int64 arrives as a decimal string
    assert sequences == list(range(int(first_sequence), int(first_sequence) + len(sequences)))
    assert int(events[-1][1]) == sequences[-1]
    assert summary["completed"]["status"] == "completed"
    assert summary["completed"]["result"] == "smoke done"
    assert summary["completed"]["output"] == "hello from the worker"

    # The cancelled task, as Node saw it and as the service has it.
    cancelled = summary["cancelled"]
    assert cancelled["status"] == "cancelled"
    assert f"cancelled {cancelled['task_id']} status=cancelled\n" in lines
    tasks = task_service_pb2_grpc.TaskServiceStub(client.channel)
    request = tpb.GetStatusRequest(agent_id=agent_id, task_id=cancelled["task_id"])
    stored = await tasks.GetStatus(request, metadata=client.metadata)
    assert stored.task.status == "cancelled"
