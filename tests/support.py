"""Helpers the tests share: settings for a test service, gRPC stubs with a credential, and the
rich error details of a failed call."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agenttasks.core import lifecycle
from agenttasks.core.model import TaskResult, utcnow
from agenttasks.core.ports import WriteTx, save
from agenttasks.settings import Settings
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import agent_service_pb2_grpc, task_service_pb2_grpc
from agenttasks.v1 import task_service_pb2 as tpb


def write_output(tx: WriteTx, task_id: str, text: str, result: str = "") -> None:
    """Give a stored task `text` as its output the way a worker's report does (an output event
    and the task's count), and a result, inside a store write: for tests of big tasks."""
    task = tx.get_task("default", task_id)
    assert task is not None
    now = utcnow()
    task, _ = save(tx, lifecycle.output(task, text, len(text.encode()), now))
    if result:
        tx.update_task(replace(task, result=TaskResult(result)))


def make_settings(db: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "db": str(db),
        "grpc_port": 0,
        "gateway": False,
        "public_base_url": "http://api.test",
        "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Api:
    """Stubs on one channel that send one credential."""

    channel: grpc.aio.Channel
    tasks: task_service_pb2_grpc.TaskServiceStub
    agents: agent_service_pb2_grpc.AgentServiceStub
    metadata: tuple[tuple[str, str], ...]

    async def create_agent(self, name: str = "agent", **fields: object) -> str:
        answer = await self.agents.CreateAgent(apb.CreateAgentRequest(name=name, **fields), metadata=self.metadata)
        return str(answer.agent.agent_id)

    async def submit(self, agent_id: str, message: str = "do it", **fields: object) -> tpb.SubmitResponse:
        request = tpb.SubmitRequest(agent_id=agent_id, message=message, **fields)
        answer: tpb.SubmitResponse = await self.tasks.Submit(request, metadata=self.metadata)
        return answer


def api_for(address: str, credential: str, header: str = "authorization") -> Api:
    channel = grpc.aio.insecure_channel(address)
    value = f"Bearer {credential}" if header == "authorization" else credential
    return Api(
        channel=channel,
        tasks=task_service_pb2_grpc.TaskServiceStub(channel),
        agents=agent_service_pb2_grpc.AgentServiceStub(channel),
        metadata=((header, value),),
    )


def error_info(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """(code, ErrorInfo reason, BadRequest field names) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, fields = "", []
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return error.code(), reason, fields
