"""One task, one trace: Submit, store write, dispatch, worker handling, reports and webhook
deliveries, joined across processes' boundaries by the W3C trace context (issue 16 point 3).

Real parts throughout: the in-process gRPC server on each store backend, the worker SDK with the
exec runner running a real program, a real HTTP receiver for the webhook. Spans are collected
with the OpenTelemetry SDK's in-memory exporter; server and worker share this process, so they
share it. The Submit carries a traceparent as a client would send it, and the test checks that
every span of the task is in that trace and hangs off another of its spans (or the client's).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.observe import tracing
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from agenttasks.worker import ExecRunner, Worker
from tests.dispatch.raw_worker import RawWorker, ref
from tests.support import Api, PostgresDatabases, api_for, make_settings
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.asyncio

DEADLINE = 20.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
TRACESTATE = "client=kept"
# Reports progress, writes output, and answers with the trace context it was given.
PROGRAM = "import os; print('::progress:: 50 halfway'); print('TRACEPARENT=' + os.environ.get('TRACEPARENT', ''))"
# Every kind of span one task's life makes here, by name.
EXPECTED = {
    "agenttasks.v1.TaskService/Submit",
    "agenttasks.store.write",
    "agenttasks.dispatch",
    "agenttasks.worker.handle",
    "agenttasks.report.progress",
    "agenttasks.report.output",
    "agenttasks.report.complete",
    "agenttasks.webhook.deliver",
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def trace_of(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if s.context is not None and hex_id(s.context.trace_id, 32) == TRACE_ID
    ]


async def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The trace's spans once every expected kind has ended (a deadline, not a timing check)."""

    async def complete() -> list[ReadableSpan]:
        while not {s.name for s in trace_of(exporter)} >= EXPECTED:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return trace_of(exporter)

    try:
        return await asyncio.wait_for(complete(), DEADLINE)
    except TimeoutError:
        pytest.fail(f"missing spans {EXPECTED - {s.name for s in trace_of(exporter)}}")


def assert_connected(trace: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """Every span's parent is another span of the trace, or the client's span for the Submit;
    returns the spans by name (the last of each name)."""
    ids = {s.context.span_id for s in trace if s.context is not None}
    for span in trace:
        assert span.parent is not None, f"{span.name} is a root: it started a trace of its own"
        assert span.parent.span_id in ids or hex_id(span.parent.span_id, 16) == CLIENT_SPAN, span.name
    by_name = {s.name: s for s in trace}
    submit = by_name["agenttasks.v1.TaskService/Submit"]
    assert submit.parent is not None and hex_id(submit.parent.span_id, 16) == CLIENT_SPAN
    assert by_name["agenttasks.store.write"].parent.span_id == submit.context.span_id  # type: ignore[union-attr]
    assert by_name["agenttasks.dispatch"].parent.span_id == submit.context.span_id  # type: ignore[union-attr]
    handle = by_name["agenttasks.worker.handle"]
    assert handle.parent.span_id == by_name["agenttasks.dispatch"].context.span_id  # type: ignore[union-attr]
    for name in ("agenttasks.report.progress", "agenttasks.report.output", "agenttasks.report.complete"):
        assert by_name[name].parent.span_id == handle.context.span_id, name  # type: ignore[union-attr]
    assert by_name["agenttasks.webhook.deliver"].parent.span_id == submit.context.span_id  # type: ignore[union-attr]
    return by_name


def parent_in(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent header value."""
    version, trace_id, span_id, _ = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id


async def run_one_task(
    submit_to: Api, worker_address: str, worker_key: str, agent_id: str, receiver: Receiver, *, worker_first: bool
) -> tuple[str, str]:
    """Submit one webhook task with the client's traceparent, let an exec runner on
    `worker_address` do it, and wait for its completed webhook; the task's result text and the
    worker's id. `worker_first`: the worker is connected before the Submit, which then starts the
    task in its own write; otherwise the task is queued first and a dispatch round starts it."""
    metadata = (*submit_to.metadata, ("traceparent", TRACEPARENT), ("tracestate", TRACESTATE))
    request = tpb.SubmitRequest(
        agent_id=agent_id, message="trace me", callback_mode="webhook", webhook_url=receiver.url()
    )
    worker = Worker(worker_address, worker_key, agent_id, ExecRunner([sys.executable, "-c", PROGRAM]), freeze_gc=False)
    if not worker_first:
        answer = await submit_to.tasks.Submit(request, metadata=metadata)
    async with worker:
        if worker_first:
            await asyncio.wait_for(worker.wait_connected(), DEADLINE)
            answer = await submit_to.tasks.Submit(request, metadata=metadata)

        async def delivered() -> None:
            async with receiver.arrived:
                await receiver.arrived.wait_for(lambda: len(receiver.requests) > 0)

        await asyncio.wait_for(delivered(), DEADLINE)
    status = await submit_to.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id=agent_id, task_id=answer.task_id), metadata=submit_to.metadata
    )
    assert status.task.status == "completed", status.task
    assert worker.worker_id is not None
    return str(status.task.result.text), worker.worker_id


async def test_one_task_is_one_connected_trace_from_submit_to_webhook(
    db_path: Path | str, spans: InMemorySpanExporter
) -> None:
    async with (
        Service(make_settings(db_path, webhook_allow="127.0.0.0/8")) as service,
        Receiver() as receiver,
    ):
        client = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        worker_key = await create_api_key(service.store, "default", Role.WORKER)
        try:
            agent_id = await client.create_agent("traced")
            result, _ = await run_one_task(client, service.address, worker_key, agent_id, receiver, worker_first=True)
        finally:
            await client.channel.close()
        by_name = assert_connected(await finished(spans))

    # The program saw the worker's handling span as its parent, in the client's trace.
    assert result.startswith("TRACEPARENT="), result
    assert parent_in(result.removeprefix("TRACEPARENT=").strip()) == (
        TRACE_ID,
        hex_id(by_name["agenttasks.worker.handle"].context.span_id, 16),  # type: ignore[union-attr]
    )
    # The receiver got the delivery span's context, and the client's tracestate came along.
    (hook,) = receiver.requests
    assert parent_in(hook.headers["traceparent"]) == (
        TRACE_ID,
        hex_id(by_name["agenttasks.webhook.deliver"].context.span_id, 16),  # type: ignore[union-attr]
    )
    assert hook.headers["tracestate"] == TRACESTATE
    assert by_name["agenttasks.webhook.deliver"].attributes["http.response.status_code"] == 200  # type: ignore[index]


@pytest_asyncio.fixture
async def two_servers(postgres_databases: PostgresDatabases) -> AsyncIterator[tuple[Service, Service]]:
    with postgres_databases.database() as url:
        settings = make_settings(url, webhook_allow="127.0.0.0/8")
        async with Service(settings) as first, Service(settings) as second:
            yield first, second


async def test_the_trace_continues_on_the_replica_that_dispatches_the_task(
    two_servers: tuple[Service, Service], spans: InMemorySpanExporter
) -> None:
    """Submitted through A, dispatched by B to a worker connected to B (one PostgreSQL store):
    B found the trace context in the task row, since nothing else carried it from A."""
    a, b = two_servers
    async with Receiver() as receiver:
        client = api_for(a.address, await create_api_key(a.store, "default", Role.CLIENT))
        worker_key = await create_api_key(a.store, "default", Role.WORKER)
        try:
            agent_id = await client.create_agent("traced")
            _, worker_id = await run_one_task(client, b.address, worker_key, agent_id, receiver, worker_first=False)
        finally:
            await client.channel.close()
        by_name = assert_connected(await finished(spans))
    # Only B had a worker, so B dispatched (to that worker, connected to B alone).
    dispatch = by_name["agenttasks.dispatch"].attributes or {}
    assert (dispatch["agenttasks.worker_id"], dispatch["agenttasks.attempt"]) == (worker_id, 1)


async def test_reports_without_a_traceparent_continue_the_dispatch(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    """A worker that knows nothing of traces (not the Python SDK): its reports' spans hang off
    the dispatch span the server sent it, and the assignment carried that span's context."""
    async with Service(make_settings(tmp_path / "raw.db")) as service:
        client = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        worker = RawWorker(service.address, await create_api_key(service.store, "default", Role.WORKER), "", 1)
        try:
            worker.agent_id = await client.create_agent("raw")
            await worker.start()
            metadata = (*client.metadata, ("traceparent", TRACEPARENT))
            await client.tasks.Submit(tpb.SubmitRequest(agent_id=worker.agent_id, message="m"), metadata=metadata)
            assignment = await worker.next_assignment()
            progress = await worker.send(progress=wpb.ReportProgress(task=ref(assignment), percent=50))
            done = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="ok"))
            assert (progress.code, done.code) == (0, 0)
        finally:
            await worker.close()
            await client.channel.close()
    by_name = {s.name: s for s in trace_of(spans)}
    dispatch = by_name["agenttasks.dispatch"].context
    assert dispatch is not None
    assert parent_in(assignment.traceparent) == (TRACE_ID, hex_id(dispatch.span_id, 16))
    for name in ("agenttasks.report.progress", "agenttasks.report.complete"):
        assert by_name[name].parent is not None and by_name[name].parent.span_id == dispatch.span_id, name


async def test_a_refused_call_s_span_says_with_which_status(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    async with Service(make_settings(tmp_path / "refused.db")) as service:
        client = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        try:
            agent_id = await client.create_agent("refusing")
            metadata = (*client.metadata, ("traceparent", TRACEPARENT))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.tasks.Submit(tpb.SubmitRequest(agent_id=agent_id, message=""), metadata=metadata)
        finally:
            await client.channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (submit,) = [s for s in trace_of(spans) if s.name == "agenttasks.v1.TaskService/Submit"]
    assert submit.attributes is not None and submit.attributes["rpc.grpc.status_code"] == 3
    assert not submit.status.is_ok
