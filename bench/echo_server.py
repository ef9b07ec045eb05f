"""The baselines' server: a trivial grpc.aio process built the way `agenttasks serve` is built.

Same grpcio, same server options (`agenttasks.app.GRPC_OPTIONS`), one process, the default
asyncio loop as `serve` uses, the same message types. Two services:

- `bench.Echo/Submit` answers every SubmitRequest with one prebuilt SubmitResponse: the ceiling
  for a unary call of Submit's size, with nothing stored.
- `bench.Broadcast/Watch` streams a snapshot and then whatever `bench.Broadcast/Publish` hands
  to every open stream: the bare broadcast that watch fan-out is compared with.

Run `python -m bench.echo_server`; it prints `echo gRPC listening on HOST:PORT` and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from agenttasks.app import GRPC_OPTIONS
from agenttasks.v1 import task_pb2
from agenttasks.v1 import task_service_pb2 as pb

ECHO_SUBMIT = "/bench.Echo/Submit"
BROADCAST_WATCH = "/bench.Broadcast/Watch"
BROADCAST_PUBLISH = "/bench.Broadcast/Publish"

_NOW = timestamp_pb2.Timestamp(seconds=1_700_000_000)
_TASK_ID = "01900000-0000-7000-8000-000000000000"
_BASE = f"http://127.0.0.1:8080/agent/{_TASK_ID}/task/{_TASK_ID}"
ANSWER = pb.SubmitResponse(
    task_id=_TASK_ID,
    status="queued",
    created_at=_NOW,
    estimated_start=_NOW,
    poll_url=_BASE,
    cancel_url=f"{_BASE}/cancel",
    agent_id=_TASK_ID,
)


class Broadcast:
    """Open Watch streams, each with its own queue, as the event hub keeps one per watcher."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[pb.WatchTaskResponse | None]] = set()

    async def watch(self, request: pb.WatchTaskRequest, context: object) -> AsyncIterator[pb.WatchTaskResponse]:
        queue: asyncio.Queue[pb.WatchTaskResponse | None] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield pb.WatchTaskResponse(
                sequence=1, type="snapshot", task_id=request.task_id, task=task_pb2.Task(task_id=request.task_id)
            )
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self.queues.discard(queue)

    async def publish(self, request: pb.SendMessageRequest, context: object) -> pb.SendMessageResponse:
        event = pb.WatchTaskResponse(
            sequence=2,
            type="message",
            task_id=request.task_id,
            status="queued",
            time=_NOW,
            message=task_pb2.TaskMessage(message_id=_TASK_ID, text=request.message, created_at=_NOW),
        )
        for queue in self.queues:
            queue.put_nowait(event)
        return pb.SendMessageResponse(task_id=request.task_id, message_id=_TASK_ID, status="queued", created_at=_NOW)

    def close(self) -> None:
        for queue in self.queues:
            queue.put_nowait(None)


async def echo_submit(request: pb.SubmitRequest, context: object) -> pb.SubmitResponse:
    return ANSWER


async def main() -> None:
    broadcast = Broadcast()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    handlers = {
        ECHO_SUBMIT: grpc.unary_unary_rpc_method_handler(
            echo_submit, pb.SubmitRequest.FromString, pb.SubmitResponse.SerializeToString
        ),
        BROADCAST_WATCH: grpc.unary_stream_rpc_method_handler(
            broadcast.watch, pb.WatchTaskRequest.FromString, pb.WatchTaskResponse.SerializeToString
        ),
        BROADCAST_PUBLISH: grpc.unary_unary_rpc_method_handler(
            broadcast.publish, pb.SendMessageRequest.FromString, pb.SendMessageResponse.SerializeToString
        ),
    }
    for full_name, handler in handlers.items():
        service, method = full_name.strip("/").split("/")
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo gRPC listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    broadcast.close()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(main())
