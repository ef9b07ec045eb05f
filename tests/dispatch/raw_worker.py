"""A worker speaking the raw WorkerService protocol, so tests control every message it sends
(or does not send: a silent zombie is a worker that stops heartbeating)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from agenttasks.v1 import worker_service_pb2 as wpb
from agenttasks.v1 import worker_service_pb2_grpc


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


class RawWorker:
    def __init__(
        self,
        address: str,
        key: str,
        agent_id: str,
        capacity: int = 1,
        heartbeat: bool = True,
        accepts_batches: bool = False,
    ) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.accepts_batches = accepts_batches
        # Sizes of the server's messages as they came: 1 for a single push, N for a batch of N.
        self.message_sizes: list[int] = []
        self.key = key
        self.agent_id = agent_id
        self.capacity = capacity
        self.heartbeat = heartbeat
        self.assignments: asyncio.Queue[wpb.Assignment] = asyncio.Queue()
        self.deliveries: asyncio.Queue[wpb.MessageDelivery] = asyncio.Queue()
        self.cancels: asyncio.Queue[wpb.CancelTask] = asyncio.Queue()
        self.welcome: wpb.Welcome | None = None
        self.ended = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self._out: asyncio.Queue[wpb.ConnectRequest | None] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[status_pb2.Status]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def _requests(self) -> AsyncIterator[wpb.ConnectRequest]:
        while (request := await self._out.get()) is not None:
            yield request

    async def start(self) -> RawWorker:
        stub = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.call = stub.Connect(self._requests(), metadata=(("authorization", f"Bearer {self.key}"),))
        hello = wpb.Hello(
            agent_id=self.agent_id,
            capacity=self.capacity,
            worker_name="raw-test-worker",
            accepts_batches=self.accepts_batches,
        )
        self._out.put_nowait(wpb.ConnectRequest(request_id=next(self._ids), hello=hello))
        first = await self.call.read()
        if first is grpc.aio.EOF:
            raise AssertionError("stream ended before welcome")
        self.welcome = first.welcome
        self._tasks.append(asyncio.create_task(self._read()))
        if self.heartbeat:
            self._tasks.append(asyncio.create_task(self._beat()))
        return self

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                pushes = list(message.batch.pushes) if message.WhichOneof("kind") == "batch" else [message]
                self.message_sizes.append(len(pushes))
                for response in pushes:
                    self._on_push(response)
        except grpc.aio.AioRpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def _on_push(self, response: wpb.ConnectResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "assign":
            self.assignments.put_nowait(response.assign)
        elif kind == "deliver":
            self.deliveries.put_nowait(response.deliver)
        elif kind == "cancel":
            self.cancels.put_nowait(response.cancel)
        elif kind == "ack":
            future = self._acks.pop(response.ack.request_id, None)
            if future is not None and not future.done():
                future.set_result(response.ack.status)

    async def _beat(self) -> None:
        assert self.welcome is not None
        while True:
            await asyncio.sleep(self.welcome.heartbeat_seconds)
            self._out.put_nowait(wpb.ConnectRequest(heartbeat=wpb.Heartbeat()))

    def stop_heartbeats(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()

    async def send(self, **kind: Any) -> status_pb2.Status:
        """Send one report (e.g. complete=wpb.CompleteTask(...)) and wait for its ack."""
        request_id = next(self._ids)
        future: asyncio.Future[status_pb2.Status] = asyncio.get_running_loop().create_future()
        self._acks[request_id] = future
        self._out.put_nowait(wpb.ConnectRequest(request_id=request_id, **kind))
        return await asyncio.wait_for(future, 30)

    async def send_batch(self, reports: list[wpb.ConnectRequest]) -> list[status_pb2.Status]:
        """Send reports in one ReportBatch (request ids given here) and wait for every ack."""
        futures = []
        for report in reports:
            report.request_id = next(self._ids)
            future: asyncio.Future[status_pb2.Status] = asyncio.get_running_loop().create_future()
            self._acks[report.request_id] = future
            futures.append(future)
        self._out.put_nowait(wpb.ConnectRequest(batch=wpb.ReportBatch(reports=reports)))
        return list(await asyncio.wait_for(asyncio.gather(*futures), 30))

    async def next_assignment(self) -> wpb.Assignment:
        return await asyncio.wait_for(self.assignments.get(), 30)

    async def close(self) -> None:
        """End the stream from the worker's side (a clean goodbye)."""
        for task in self._tasks[1:]:
            task.cancel()
        self._out.put_nowait(None)
        if self._tasks:  # a refused connection never started its reader
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ended.wait(), 10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close()

    async def vanish(self) -> None:
        """Drop the connection abruptly, like a crashed process."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close(grace=None)


def ref(assignment: wpb.Assignment) -> wpb.TaskRef:
    return wpb.TaskRef(task_id=assignment.task.task_id, attempt=assignment.task.attempt)
