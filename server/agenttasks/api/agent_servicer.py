"""gRPC AgentService: translates messages to AgentCore calls through the Gate."""

from __future__ import annotations

import grpc

from agenttasks.api import convert
from agenttasks.api.gate import Gate
from agenttasks.core.agents import AgentCore
from agenttasks.core.model import Principal
from agenttasks.v1 import agent_service_pb2 as pb
from agenttasks.v1 import agent_service_pb2_grpc

Ctx = grpc.aio.ServicerContext[object, object]
_SERVICE = "/agenttasks.v1.AgentService/"


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, core: AgentCore, gate: Gate) -> None:
        self._core = core
        self._gate = gate

    async def CreateAgent(self, request: pb.CreateAgentRequest, context: Ctx) -> pb.CreateAgentResponse:
        async def run(p: Principal) -> pb.CreateAgentResponse:
            agent = await self._core.create(
                p,
                name=request.name,
                description=request.description,
                default_timeout_seconds=convert.optional(request, "default_timeout_seconds"),
                max_attempts=convert.optional(request, "max_attempts"),
                input_timeout_seconds=convert.optional(request, "input_timeout_seconds"),
                metadata=convert.struct_to_dict(request, "metadata"),
            )
            return pb.CreateAgentResponse(agent=convert.agent(agent))

        return await self._gate.unary(context, _SERVICE + "CreateAgent", run, request)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Ctx) -> pb.ListAgentsResponse:
        async def run(p: Principal) -> pb.ListAgentsResponse:
            agents, token = await self._core.list(p, page_size=request.page_size, page_token=request.page_token)
            return pb.ListAgentsResponse(agents=[convert.agent(a) for a in agents], next_page_token=token)

        return await self._gate.unary(context, _SERVICE + "ListAgents", run, request)

    async def GetAgent(self, request: pb.GetAgentRequest, context: Ctx) -> pb.GetAgentResponse:
        async def run(p: Principal) -> pb.GetAgentResponse:
            return pb.GetAgentResponse(agent=convert.agent(await self._core.get(p, request.agent_id)))

        return await self._gate.unary(context, _SERVICE + "GetAgent", run, request)

    async def UpdateAgent(self, request: pb.UpdateAgentRequest, context: Ctx) -> pb.UpdateAgentResponse:
        async def run(p: Principal) -> pb.UpdateAgentResponse:
            agent = await self._core.update(
                p,
                request.agent_id,
                name=convert.optional(request, "name"),
                description=convert.optional(request, "description"),
                default_timeout_seconds=convert.optional(request, "default_timeout_seconds"),
                max_attempts=convert.optional(request, "max_attempts"),
                input_timeout_seconds=convert.optional(request, "input_timeout_seconds"),
                metadata=convert.struct_to_dict(request, "metadata"),
            )
            return pb.UpdateAgentResponse(agent=convert.agent(agent))

        return await self._gate.unary(context, _SERVICE + "UpdateAgent", run, request)

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context: Ctx) -> pb.DeleteAgentResponse:
        async def run(p: Principal) -> pb.DeleteAgentResponse:
            cancelled = await self._core.delete(p, request.agent_id)
            return pb.DeleteAgentResponse(agent_id=request.agent_id, cancelled_tasks=cancelled)

        return await self._gate.unary(context, _SERVICE + "DeleteAgent", run, request)

    async def PauseAgent(self, request: pb.PauseAgentRequest, context: Ctx) -> pb.PauseAgentResponse:
        async def run(p: Principal) -> pb.PauseAgentResponse:
            return pb.PauseAgentResponse(agent=convert.agent(await self._core.pause(p, request.agent_id)))

        return await self._gate.unary(context, _SERVICE + "PauseAgent", run, request)

    async def ResumeAgent(self, request: pb.ResumeAgentRequest, context: Ctx) -> pb.ResumeAgentResponse:
        async def run(p: Principal) -> pb.ResumeAgentResponse:
            return pb.ResumeAgentResponse(agent=convert.agent(await self._core.resume(p, request.agent_id)))

        return await self._gate.unary(context, _SERVICE + "ResumeAgent", run, request)

    async def StopAgent(self, request: pb.StopAgentRequest, context: Ctx) -> pb.StopAgentResponse:
        async def run(p: Principal) -> pb.StopAgentResponse:
            return pb.StopAgentResponse(agent=convert.agent(await self._core.stop(p, request.agent_id)))

        return await self._gate.unary(context, _SERVICE + "StopAgent", run, request)

    async def SetAgentStatus(self, request: pb.SetAgentStatusRequest, context: Ctx) -> pb.SetAgentStatusResponse:
        async def run(p: Principal) -> pb.SetAgentStatusResponse:
            agent = await self._core.set_status(p, request.agent_id, request.status, request.status_message)
            return pb.SetAgentStatusResponse(agent=convert.agent(agent))

        return await self._gate.unary(context, _SERVICE + "SetAgentStatus", run, request)
