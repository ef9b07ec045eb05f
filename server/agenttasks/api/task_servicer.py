"""gRPC TaskService: translates messages to TaskCore calls through the Gate."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from agenttasks.api import convert
from agenttasks.api.errors import mapping_for
from agenttasks.api.gate import Gate, call_metadata
from agenttasks.core.errors import InvalidArgument, Why
from agenttasks.core.model import Principal, utcnow
from agenttasks.core.tasks import TaskCore
from agenttasks.observe import logs
from agenttasks.v1 import task_service_pb2 as pb
from agenttasks.v1 import task_service_pb2_grpc

Ctx = grpc.aio.ServicerContext[object, object]
_SERVICE = "/agenttasks.v1.TaskService/"
IDEMPOTENCY_HEADER = "idempotency-key"


def idempotency_key(request_id: str, context: Ctx) -> str:
    """The client key from the request field or the `idempotency-key` header (they must agree)."""
    header = call_metadata(context).get(IDEMPOTENCY_HEADER, "")
    if request_id and header and request_id != header:
        raise InvalidArgument.field(
            "request_id", "differs from the idempotency-key header; send one of them", Why.CONFLICT
        )
    return request_id or header


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    def __init__(self, core: TaskCore, gate: Gate) -> None:
        self._core = core
        self._gate = gate

    async def Submit(self, request: pb.SubmitRequest, context: Ctx) -> pb.SubmitResponse:
        async def run(p: Principal) -> pb.SubmitResponse:
            item = convert.submit_input(request, idempotency_key(request.request_id, context))
            answer = await self._core.submit(p, request.agent_id, item)
            logs.bind(task_id=answer.task_id)  # new: its access line names it
            return convert.submit_response(answer)

        return await self._gate.unary(context, _SERVICE + "Submit", run, request)

    async def BatchSubmit(self, request: pb.BatchSubmitRequest, context: Ctx) -> pb.BatchSubmitResponse:
        async def run(p: Principal) -> pb.BatchSubmitResponse:
            if call_metadata(context).get(IDEMPOTENCY_HEADER):
                raise InvalidArgument.field(
                    IDEMPOTENCY_HEADER,
                    "not taken by BatchSubmit; give each request its own request_id",
                    Why.NOT_ALLOWED_VALUE,
                )
            items = []
            for i, each in enumerate(request.requests):
                if each.agent_id not in ("", request.agent_id):
                    raise InvalidArgument.field(
                        f"requests[{i}].agent_id", "must be empty or equal to agent_id", Why.CONFLICT
                    )
                try:
                    items.append(convert.submit_input(each, each.request_id))
                except InvalidArgument as error:
                    raise error.within(f"requests[{i}].") from None
            results = await self._core.submit_batch(p, request.agent_id, items)
            return pb.BatchSubmitResponse(responses=[convert.submit_response(r) for r in results])

        return await self._gate.unary(context, _SERVICE + "BatchSubmit", run, request)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Ctx) -> pb.GetStatusResponse:
        async def run(p: Principal) -> pb.GetStatusResponse:
            task, deliveries = await self._core.status(p, request.agent_id, request.task_id)
            return pb.GetStatusResponse(task=convert.task(task, deliveries))

        return await self._gate.unary(context, _SERVICE + "GetStatus", run, request)

    async def SendMessage(self, request: pb.SendMessageRequest, context: Ctx) -> pb.SendMessageResponse:
        async def run(p: Principal) -> pb.SendMessageResponse:
            result = await self._core.send_message(
                p,
                request.agent_id,
                request.task_id,
                request.message,
                idempotency_key(request.request_id, context),
            )
            return convert.message_response(result)

        return await self._gate.unary(context, _SERVICE + "SendMessage", run, request)

    async def Cancel(self, request: pb.CancelRequest, context: Ctx) -> pb.CancelResponse:
        async def run(p: Principal) -> pb.CancelResponse:
            task = await self._core.cancel(p, request.agent_id, request.task_id)
            return pb.CancelResponse(task=convert.task(task))

        return await self._gate.unary(context, _SERVICE + "Cancel", run, request)

    async def ListTasks(self, request: pb.ListTasksRequest, context: Ctx) -> pb.ListTasksResponse:
        async def run(p: Principal) -> pb.ListTasksResponse:
            tasks, token = await self._core.list(
                p, request.agent_id, status=request.status, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListTasksResponse(tasks=[convert.task(t) for t in tasks], next_page_token=token)

        return await self._gate.unary(context, _SERVICE + "ListTasks", run, request)

    async def WatchTask(self, request: pb.WatchTaskRequest, context: Ctx) -> AsyncIterator[pb.WatchTaskResponse]:
        async def run(p: Principal) -> AsyncIterator[pb.WatchTaskResponse]:
            async for item in self._core.watch(p, request.agent_id, request.task_id, request.after_sequence):
                yield convert.watch_item(item)

        def ended_by_error(error: BaseException) -> pb.WatchTaskResponse:
            # Resumable: the client reconnects with after_sequence from the last message it got.
            return pb.WatchTaskResponse(
                type="end", task_id=request.task_id, reason=mapping_for(error).reason, time=convert.timestamp(utcnow())
            )

        async for message in self._gate.stream(context, _SERVICE + "WatchTask", run, ended_by_error, request):
            yield message
