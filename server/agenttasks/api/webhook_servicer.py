"""gRPC WebhookService: the delivery log, manual retry, and the tenant's signing secret."""

from __future__ import annotations

import grpc

from agenttasks.api import convert
from agenttasks.api.gate import Gate
from agenttasks.core.model import Principal, SigningSecret
from agenttasks.v1 import webhook_service_pb2 as pb
from agenttasks.v1 import webhook_service_pb2_grpc
from agenttasks.webhooks.service import WebhookCore

Ctx = grpc.aio.ServicerContext[object, object]
_SERVICE = "/agenttasks.v1.WebhookService/"


def _secret_fields(s: SigningSecret) -> dict[str, object]:
    return {
        "secret": s.secret,
        "previous_secret": s.previous_secret,
        "previous_expires_at": convert.timestamp(s.previous_until),
        "created_at": convert.timestamp(s.created_at),
    }


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(self, core: WebhookCore, gate: Gate) -> None:
        self._core = core
        self._gate = gate

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Ctx
    ) -> pb.ListWebhookDeliveriesResponse:
        async def run(p: Principal) -> pb.ListWebhookDeliveriesResponse:
            deliveries = await self._core.deliveries(p, request.agent_id, request.task_id)
            return pb.ListWebhookDeliveriesResponse(deliveries=[convert.delivery(d) for d in deliveries])

        return await self._gate.unary(context, _SERVICE + "ListWebhookDeliveries", run, request)

    async def RetryWebhookDelivery(
        self, request: pb.RetryWebhookDeliveryRequest, context: Ctx
    ) -> pb.RetryWebhookDeliveryResponse:
        async def run(p: Principal) -> pb.RetryWebhookDeliveryResponse:
            delivery = await self._core.retry(p, request.delivery_id)
            return pb.RetryWebhookDeliveryResponse(delivery=convert.delivery(delivery))

        return await self._gate.unary(context, _SERVICE + "RetryWebhookDelivery", run, request)

    async def GetSigningSecret(self, request: pb.GetSigningSecretRequest, context: Ctx) -> pb.GetSigningSecretResponse:
        async def run(p: Principal) -> pb.GetSigningSecretResponse:
            return pb.GetSigningSecretResponse(**_secret_fields(await self._core.secret(p)))  # type: ignore[arg-type]

        return await self._gate.unary(context, _SERVICE + "GetSigningSecret", run, request)

    async def RotateSigningSecret(
        self, request: pb.RotateSigningSecretRequest, context: Ctx
    ) -> pb.RotateSigningSecretResponse:
        async def run(p: Principal) -> pb.RotateSigningSecretResponse:
            overlap = convert.optional(request, "overlap_seconds")
            return pb.RotateSigningSecretResponse(**_secret_fields(await self._core.rotate(p, overlap)))  # type: ignore[arg-type]

        return await self._gate.unary(context, _SERVICE + "RotateSigningSecret", run, request)
