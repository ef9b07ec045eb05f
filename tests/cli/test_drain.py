"""SIGTERM under load: `serve` drains, and the restarted server carries on where it stopped.

During the drain: health is NOT_SERVING, new calls are refused with UNAVAILABLE/SHUTTING_DOWN
(nothing else), every watch ends with a resumable SERVER_SHUTDOWN, the worker's stream ends and
the tasks it held are queued again. After a restart on the same store: every acknowledged Submit
is there, the watches resume after their last sequence, and the requeued tasks run.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import api_for

from .support import ServerProcess

pytestmark = pytest.mark.asyncio

ENV = {"AGENTTASKS_SHUTDOWN_GRACE_SECONDS": "3"}


async def test_sigterm_drains_under_load_and_the_restarted_server_resumes(store: Path) -> None:
    first = ServerProcess(store, env=ENV)
    try:
        key = first.admin_key()
        address = first.address()
        api = api_for(address, key)
        agent_id = await api.create_agent("drained")
        worker = await RawWorker(address, key, agent_id, capacity=3).start()
        held = [await api.submit(agent_id, f"held {i}") for i in range(3)]
        assignments = [await worker.next_assignment() for _ in held]
        watched = [t.task_id for t in held]
        streams = [
            aiter(api.tasks.WatchTask(tpb.WatchTaskRequest(agent_id=agent_id, task_id=t), metadata=api.metadata))
            for t in watched
        ]
        last = {t: (await anext(s)).sequence for t, s in zip(watched, streams, strict=True)}
        outcomes: Counter[str] = Counter()
        acked: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    acked.append((await api.submit(agent_id, "load")).task_id)
                    outcomes["ok"] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1  # a draining or stopped server: UNAVAILABLE
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        return

        loaders = [asyncio.create_task(load()) for _ in range(8)]
        await asyncio.sleep(0.3)
        first.proc.send_signal(signal.SIGTERM)
        statuses: list[int] = []
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                statuses.append(int(answer.status))
            except grpc.aio.AioRpcError as error:
                statuses.append(-error.code().value[0])  # already gone: no longer serving either
        ends = []
        for task_id, stream in zip(watched, streams, strict=True):
            rest = [m async for m in stream]
            ends.append((rest[-1].type, rest[-1].reason))
            last[task_id] = rest[-1].sequence
        await asyncio.wait_for(worker.ended.wait(), 20)
        stop.set()
        await asyncio.gather(*loaders)
        assert first.wait(20) == 0, first.stderr
        await api.channel.close()
        await worker.close()
    finally:
        first.kill()

    assert statuses[0] != health_pb2.HealthCheckResponse.SERVING
    assert ends == [("end", "SERVER_SHUTDOWN")] * len(watched)
    assert set(outcomes) <= {"ok", "UNAVAILABLE"}, outcomes  # refusals only, and only UNAVAILABLE
    assert outcomes["ok"] > 0

    second = ServerProcess(store, env=ENV)
    try:
        api = api_for(second.address(), key)
        for task_id in acked:
            answer = await api.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata
            )
            assert answer.task.status == "queued"
        for assignment in assignments:  # handed back at the drain: queued again, not running
            answer = await api.tasks.GetStatus(
                tpb.GetStatusRequest(agent_id=agent_id, task_id=assignment.task.task_id), metadata=api.metadata
            )
            assert answer.task.status == "queued", answer.task
        again = await RawWorker(second.address(), key, agent_id, capacity=100).start()
        task_id = watched[0]
        stream = aiter(
            api.tasks.WatchTask(
                tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=last[task_id]),
                metadata=api.metadata,
            )
        )
        snapshot = await anext(stream)
        mine = None
        while mine is None:
            assignment = await again.next_assignment()
            if assignment.task.task_id == task_id:
                mine = assignment
        ack = await again.send(complete=wpb.CompleteTask(task=ref(mine), text="after the restart"))
        assert ack.code == 0, ack
        rest = [m async for m in stream]
        assert [m.sequence for m in rest[:-1]] == list(range(last[task_id] + 1, rest[-1].sequence + 1))
        assert (rest[-1].type, rest[-1].reason, rest[-1].status) == ("end", "TASK_FINISHED", "completed")
        assert snapshot.type == "snapshot"
        await again.close()
        await api.channel.close()
    finally:
        second.stop()
        second.kill()
