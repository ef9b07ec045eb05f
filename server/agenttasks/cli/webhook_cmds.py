"""`agenttasks webhooks ...`: a task's delivery log, manual retry, and the signing secret."""

from __future__ import annotations

import argparse

from google.protobuf.message import Message

from agenttasks.cli import render
from agenttasks.cli.client import Client
from agenttasks.v1 import webhook_service_pb2 as wpb
from agenttasks.v1 import webhook_service_pb2_grpc

ANY_AGENT = "-"


def _stub(client: Client) -> webhook_service_pb2_grpc.WebhookServiceStub:
    return webhook_service_pb2_grpc.WebhookServiceStub(client.channel)


def _time(message: Message, field: str) -> str:
    if not message.HasField(field):
        return "-"
    return str(getattr(message, field).ToDatetime().isoformat(timespec="seconds") + "Z")


def list_deliveries(client: Client, args: argparse.Namespace) -> int:
    request = wpb.ListWebhookDeliveriesRequest(agent_id=ANY_AGENT, task_id=args.task_id)
    answer = client.call(_stub(client).ListWebhookDeliveries, request)
    if args.json:
        print(render.as_json(answer))
        return 0
    if not answer.deliveries:
        print("no webhook deliveries (is the task's callback_mode webhook, and has it reached an event yet?)")
    for d in answer.deliveries:
        last = f"HTTP {d.last_status_code}" if d.last_status_code else (d.last_error or "-")
        when = f"next {_time(d, 'next_attempt_at')}" if d.state == "pending" else f"at {_time(d, 'last_attempt_at')}"
        print(f"{d.delivery_id}  {d.event_type:<19}  {d.state:<9}  attempts {d.attempts:<2}  last {last}  {when}")
    return 0


def retry(client: Client, args: argparse.Namespace) -> int:
    answer = client.call(
        _stub(client).RetryWebhookDelivery, wpb.RetryWebhookDeliveryRequest(delivery_id=args.delivery_id)
    )
    print(render.as_json(answer) if args.json else f"{answer.delivery.delivery_id} {answer.delivery.state}: due now")
    return 0


def secret(client: Client, args: argparse.Namespace) -> int:
    answer = client.call(_stub(client).GetSigningSecret, wpb.GetSigningSecretRequest())
    print(render.as_json(answer) if args.json else answer.secret)
    return 0


def rotate_secret(client: Client, args: argparse.Namespace) -> int:
    request = wpb.RotateSigningSecretRequest(overlap_seconds=args.overlap)
    answer = client.call(_stub(client).RotateSigningSecret, request)
    if args.json:
        print(render.as_json(answer))
    else:
        print(answer.secret)
        print(f"the previous secret keeps signing too until {_time(answer, 'previous_expires_at')}")
    return 0
