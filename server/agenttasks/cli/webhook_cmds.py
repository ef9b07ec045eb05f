"""`agenttasks webhooks ...`: a task's delivery log, manual retry, and the signing secret."""

from __future__ import annotations

import argparse

from agenttasks.cli import render
from agenttasks.cli.client import Client
from agenttasks.v1 import webhook_service_pb2 as wpb
from agenttasks.v1 import webhook_service_pb2_grpc

ANY_AGENT = "-"


def _stub(client: Client) -> webhook_service_pb2_grpc.WebhookServiceStub:
    return webhook_service_pb2_grpc.WebhookServiceStub(client.channel)


def list_deliveries(client: Client, args: argparse.Namespace) -> int:
    request = wpb.ListWebhookDeliveriesRequest(agent_id=ANY_AGENT, task_id=args.task_id)
    answer = client.call(_stub(client).ListWebhookDeliveries, request)
    if args.json:  # an array, like every other list (the answer has no page token to keep)
        print(render.json_document([render.to_dict(d) for d in answer.deliveries]))
        return 0
    render.print_table(
        render.DELIVERY_COLUMNS,
        [render.delivery_row(d) for d in answer.deliveries],
        "no webhook deliveries (is the task's callback_mode webhook, and has it reached an event yet?)",
    )
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
        until = render.when(answer, "previous_expires_at", seconds=True)
        print(f"the previous secret keeps signing too until {until}")
    return 0
