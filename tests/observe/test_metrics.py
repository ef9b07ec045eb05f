"""/metrics after known work, scraped and parsed as Prometheus does, on both store backends.

Each test runs a real service with metrics on (a real grpc.aio server, real SQLite or
PostgreSQL), drives it through its real APIs (clients, raw workers, a real webhook receiver) and
checks the exact values of the series the operator guide (docs/operations.md) documents.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core.model import Role
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.cli.support import free_port
from tests.dispatch.raw_worker import RawWorker, ref
from tests.observe.scraping import Samples, scrape, scrape_until, value
from tests.support import Api, api_for, make_settings
from tests.webhooks.receiver import Answer, Receiver

pytestmark = pytest.mark.asyncio

TASKS = "/agenttasks.v1.TaskService/"


@pytest_asyncio.fixture
async def service(db_path: Path | str) -> AsyncIterator[Service]:
    settings = make_settings(
        db_path,
        metrics_port=free_port(),
        lease_seconds=1.0,
        sweep_seconds=0.05,
        webhook_allow="127.0.0.0/8",
        webhook_retry_schedule=[0.05],
    )
    async with Service(settings) as svc:
        assert svc.metrics is not None
        svc.metrics.figures.max_age = 0  # every scrape reads the store: values right after the work
        yield svc


@pytest_asyncio.fixture
async def api(service: Service) -> AsyncIterator[Api]:
    assert service.bootstrap_key is not None
    client = api_for(service.address, service.bootstrap_key)
    yield client
    await client.channel.close()


async def cancel(api: Api, agent_id: str, task_id: str) -> None:
    await api.tasks.Cancel(tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)


async def test_ten_submitted_seven_completed_three_cancelled_and_a_worker_connected_then_gone(
    service: Service, api: Api
) -> None:
    assert service.metrics is not None
    url = service.metrics.url
    agent = await api.create_agent("metered")
    for i in range(10):
        await api.submit(agent, f"task {i}")
    samples = await scrape(url)
    assert value(samples, "agenttasks_tasks_submitted_total") == 10
    assert value(samples, "agenttasks_store_tasks", tenant="default", agent_id=agent, status="queued") == 10
    assert value(samples, "agenttasks_workers_connected", tenant="default", agent_id=agent) is None

    worker = await RawWorker(
        service.address, await create_api_key(service.store, "default", Role.WORKER), agent, 12
    ).start()
    assignments = [await worker.next_assignment() for _ in range(10)]
    samples = await scrape(url)
    assert value(samples, "agenttasks_workers_connected", tenant="default", agent_id=agent) == 1
    assert value(samples, "agenttasks_worker_free_slots", tenant="default", agent_id=agent) == 2
    assert value(samples, "agenttasks_store_tasks", tenant="default", agent_id=agent, status="running") == 10
    assert value(samples, "agenttasks_store_tasks", tenant="default", agent_id=agent, status="queued") is None
    assert value(samples, "agenttasks_task_queue_wait_seconds_count") == 10

    for assignment in assignments[:7]:
        ack = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="done"))
        assert ack.code == 0
    for assignment in assignments[7:]:
        await cancel(api, agent, assignment.task.task_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a completed task cannot be cancelled
        await cancel(api, agent, assignments[0].task.task_id)
    await worker.close()

    samples = await scrape_until(
        url, lambda s: value(s, "agenttasks_workers_connected", tenant="default", agent_id=agent) is None
    )
    assert value(samples, "agenttasks_workers_connected", tenant="default", agent_id=agent) is None
    assert value(samples, "agenttasks_tasks_submitted_total") == 10
    assert value(samples, "agenttasks_tasks_finished_total", status="completed", reason="") == 7
    assert value(samples, "agenttasks_tasks_finished_total", status="cancelled", reason="CANCELLED_BY_CLIENT") == 3
    assert value(samples, "agenttasks_tasks_finished_total", status="failed", reason="LEASE_LOST") is None
    assert value(samples, "agenttasks_task_run_seconds_count", status="completed") == 7
    assert value(samples, "agenttasks_task_run_seconds_count", status="cancelled") == 3
    assert not any(name == "agenttasks_store_tasks" for name, _ in samples)  # nothing open is left

    service_name = "agenttasks.v1.TaskService"
    assert value(samples, "agenttasks_rpc_requests_total", service=service_name, method="Submit", code="OK") == 10
    assert value(samples, "agenttasks_rpc_requests_total", service=service_name, method="Cancel", code="OK") == 3
    code = refused.value.code().name
    assert value(samples, "agenttasks_rpc_requests_total", service=service_name, method="Cancel", code=code) == 1
    assert value(samples, "agenttasks_rpc_duration_seconds_count", service=service_name, method="Submit") == 10
    assert value(samples, "agenttasks_rpc_duration_seconds_count", service=service_name, method="Cancel") == 4
    worker_stream = {"service": "agenttasks.v1.WorkerService", "method": "Connect"}
    assert value(samples, "agenttasks_rpc_requests_total", **worker_stream, code="OK") == 1
    # Every write committed: each in some batch, each batch at least one write.
    writes = value(samples, "agenttasks_store_write_seconds_count")
    assert writes is not None and writes >= 10 + 7 + 3
    assert value(samples, "agenttasks_store_commit_writes_sum") == writes


async def test_a_silent_worker_s_lease_expires_and_its_task_is_requeued(service: Service, api: Api) -> None:
    assert service.metrics is not None
    agent = await api.create_agent("leased")
    key = await create_api_key(service.store, "default", Role.WORKER)
    silent = await RawWorker(service.address, key, agent, 1, heartbeat=False).start()
    try:
        await api.submit(agent, "outlive me")
        await silent.next_assignment()
        queued = {"tenant": "default", "agent_id": agent, "status": "queued"}

        def requeued(s: Samples) -> bool:
            # The store-wide figures are read while the page is made: a read begun just before
            # the requeue committed shows it running still, beside a counter that has it.
            return (
                value(s, "agenttasks_leases_expired_total") == 1 and value(s, "agenttasks_store_tasks", **queued) == 1
            )

        samples = await scrape_until(service.metrics.url, requeued)
        assert value(samples, "agenttasks_leases_expired_total") == 1
        assert value(samples, "agenttasks_tasks_requeued_total", reason="LEASE_LOST") == 1
        assert value(samples, "agenttasks_store_tasks", **queued) == 1
        # The silent worker is still connected: it is given nothing until it speaks again.
        assert value(samples, "agenttasks_workers_connected", tenant="default", agent_id=agent) == 1
    finally:
        await silent.vanish()


async def test_webhook_attempts_by_outcome_and_the_backlog(service: Service, api: Api) -> None:
    assert service.metrics is not None
    agent = await api.create_agent("hooked")
    async with Receiver() as ok, Receiver(lambda n: Answer(500)) as failing:
        for url in (ok.url(), failing.url()):
            answer = await api.submit(agent, "hook", callback_mode="webhook", webhook_url=url)
            await cancel(api, agent, answer.task_id)  # a final status: its webhook is due now

        def settled(s: Samples) -> bool:  # the store-wide backlog may be read a moment late
            dead = value(s, "agenttasks_webhook_attempts_total", outcome="dead") == 1
            return dead and value(s, "agenttasks_store_webhook_deliveries_pending") == 0

        samples = await scrape_until(service.metrics.url, settled)
    assert value(samples, "agenttasks_webhook_attempts_total", outcome="delivered") == 1
    # The failing endpoint: one failed attempt retried, then with the schedule spent, dead.
    assert value(samples, "agenttasks_webhook_attempts_total", outcome="retrying") == 1
    assert value(samples, "agenttasks_webhook_attempts_total", outcome="dead") == 1
    assert value(samples, "agenttasks_webhook_attempt_seconds_count") == 3
    assert value(samples, "agenttasks_store_webhook_deliveries_pending") == 0


async def test_failing_webhook_endpoints_are_named_by_host(db_path: Path | str) -> None:
    """Which webhooks are failing: pending deliveries that failed, by the host they go to."""
    settings = make_settings(
        db_path, metrics_port=free_port(), webhook_allow="127.0.0.1/32", webhook_retry_schedule=[3600.0]
    )
    async with Service(settings) as service, Receiver(lambda n: Answer(503)) as down, Receiver() as up:
        assert service.metrics is not None and service.bootstrap_key is not None
        service.metrics.figures.max_age = 0
        api = api_for(service.address, service.bootstrap_key)
        agent = await api.create_agent("hooked")
        for url in (down.url("/a"), down.url("/b?token=secret"), up.url()):
            answer = await api.submit(agent, "hook", callback_mode="webhook", webhook_url=url)
            await cancel(api, agent, answer.task_id)

        down_host = f"127.0.0.1:{down.port}"

        def tried(s: Samples) -> bool:  # the store-wide figures may be read a moment late
            attempts = ("retrying", 2), ("delivered", 1)
            counted = all(value(s, "agenttasks_webhook_attempts_total", outcome=o) == n for o, n in attempts)
            failing = value(s, "agenttasks_store_webhook_deliveries_failing", host=down_host) == 2
            return counted and failing and value(s, "agenttasks_store_webhook_deliveries_pending") == 2

        samples = await scrape_until(service.metrics.url, tried)
        await api.channel.close()
    assert value(samples, "agenttasks_webhook_attempts_total", outcome="delivered") == 1
    failing = [(dict(labels), n) for (name, labels), n in samples.items() if name.endswith("_deliveries_failing")]
    assert failing == [({"host": down_host}, 2)]  # no path, no query: they may hold secrets
    assert value(samples, "agenttasks_store_webhook_deliveries_pending") == 2


async def test_per_agent_series_beyond_the_cap_are_summed_under_other(db_path: Path | str) -> None:
    settings = make_settings(db_path, metrics_port=free_port(), metrics_agent_series=1)
    async with Service(settings) as service:
        assert service.metrics is not None and service.bootstrap_key is not None
        api = api_for(service.address, service.bootstrap_key)
        busy, quiet, idle = [await api.create_agent(name) for name in ("busy", "quiet", "idle")]
        for _ in range(3):
            await api.submit(busy)
        await api.submit(quiet)
        await api.submit(idle)
        samples = await scrape(service.metrics.url)
        await api.channel.close()
    assert value(samples, "agenttasks_store_tasks", tenant="default", agent_id=busy, status="queued") == 3
    assert value(samples, "agenttasks_store_tasks", tenant="_other", agent_id="_other", status="queued") == 2
    assert len([name for name, _ in samples if name == "agenttasks_store_tasks"]) == 2


async def test_the_endpoint_answers_only_get_metrics(service: Service) -> None:
    assert service.metrics is not None

    def status(url: str, method: str = "GET") -> int:
        request = urllib.request.Request(url, method=method, data=b"x" if method == "POST" else None)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a test's own server
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    url = service.metrics.url
    assert await asyncio.to_thread(status, url) == 200
    assert await asyncio.to_thread(status, url.removesuffix("/metrics") + "/admin") == 404
    assert await asyncio.to_thread(status, url, "POST") == 405


async def test_calls_held_back_for_other_tenants_are_counted(db_path: Path | str) -> None:
    """One running call per tenant, one waiting: a held slot (standing for a call of the tenant
    still running) makes the next call wait and the one after it refused; the gauge and the
    counters say so, with the pause the line took before its waiting call (its time share)."""
    settings = make_settings(
        db_path, metrics_port=free_port(), max_running_calls_per_tenant=1, max_waiting_calls_per_tenant=1
    )
    async with Service(settings) as service:
        assert service.metrics is not None and service.gate.slots is not None
        api = api_for(service.address, await create_api_key(service.store, "default", Role.CLIENT))
        other = api_for(service.address, await create_api_key(service.store, "other", Role.CLIENT))
        try:
            agent_id, other_agent = await api.create_agent(), await other.create_agent()
            async with service.gate.slots.slot("default", Role.CLIENT):
                await other.submit(other_agent)  # two tenants calling: the caps apply
                waiting = asyncio.create_task(api.submit(agent_id))
                seen = await scrape_until(service.metrics.url, lambda s: value(s, "agenttasks_calls_waiting") == 1)
                assert value(seen, "agenttasks_calls_waited_total") == 1
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await api.submit(agent_id)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.wait_for(waiting, 30)
            after = await scrape(service.metrics.url)
            assert value(after, "agenttasks_calls_waiting") == 0
            assert value(after, "agenttasks_calls_waited_total") == 1
            assert value(after, "agenttasks_calls_refused_total") == 1
            # The waiting call started after the line's pause (it had a call waiting when the slot came free).
            assert value(after, "agenttasks_calls_paused_seconds_total") > 0
        finally:
            await api.channel.close()
            await other.channel.close()
