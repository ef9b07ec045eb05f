"""Nothing is lost on a crash: kill -9 the server with deliveries pending, start it again on the
same database, and every delivery arrives."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from agenttasks.v1 import task_service_pb2 as tpb
from tests.gateway.serve_process import ADMIN_KEY, GRPC_LISTENING, Serve
from tests.support import api_for
from tests.webhooks.receiver import Answer, Receiver

FAST = {
    "AGENTTASKS_WEBHOOK_RETRY_SCHEDULE": "[0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]",
    "AGENTTASKS_WEBHOOK_TIMEOUT_SECONDS": "2",
    "AGENTTASKS_SWEEP_SECONDS": "0.1",
}
TASKS = 20


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_deliveries_pending_at_a_crash_are_all_delivered_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    up = {"ok": False}
    async with Receiver(lambda n: Answer(200 if up["ok"] else 503)) as receiver:
        first = Serve(db, "--no-gateway", "--webhook-allow", "127.0.0.0/8", env=FAST)
        try:
            address, key = first.line(GRPC_LISTENING), first.line(ADMIN_KEY)
            api = api_for(address, key)
            try:
                agent_id = await api.create_agent()
                for i in range(TASKS):
                    answer = await api.submit(agent_id, f"job {i}", callback_mode="webhook", webhook_url=receiver.url())
                    await api.tasks.Cancel(
                        tpb.CancelRequest(agent_id=agent_id, task_id=answer.task_id), metadata=api.metadata
                    )
                await receiver.wait_for(TASKS)  # attempts are being made, and failing
            finally:
                await api.channel.close()
        finally:
            first.close()  # SIGKILL: no drain, no goodbye
        assert first.proc.returncode == -9
        failed_ids = {r.headers["webhook-id"] for r in receiver.requests}
        assert failed_ids  # some had been tried (and refused with 503) before the crash

        up["ok"] = True
        seen_before = len(receiver.requests)
        second = Serve(db, "--no-gateway", "--webhook-allow", "127.0.0.0/8", env=FAST)
        try:
            assert re.match(r"\S+:\d+", second.line(GRPC_LISTENING))
            deadline = time.monotonic() + 90
            while True:
                delivered = {r.headers["webhook-id"] for r in receiver.requests[seen_before:]}
                if len(delivered) == TASKS:
                    break
                assert time.monotonic() < deadline, f"{len(delivered)} of {TASKS} delivered after the restart"
                await asyncio.sleep(0.1)
        finally:
            second.close()
    assert failed_ids <= delivered
