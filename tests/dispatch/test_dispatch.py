"""Dispatch, leases, cancel and timeouts with real workers on the real WorkerService stream."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta

import grpc
import pytest

from agenttasks.app import Service
from agenttasks.auth import create_api_key
from agenttasks.core import lifecycle
from agenttasks.core.model import Role, utcnow
from agenttasks.core.ports import WriteTx, save
from agenttasks.store import open_store
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb
from agenttasks.v1 import worker_service_pb2 as wpb
from tests.dispatch.raw_worker import RawWorker, reason_of, ref
from tests.support import Api

pytestmark = pytest.mark.asyncio

StartWorker = Callable[..., Awaitable[RawWorker]]


async def status(api: Api, task_id: str) -> tpb.GetStatusResponse:
    answer: tpb.GetStatusResponse = await api.tasks.GetStatus(
        tpb.GetStatusRequest(agent_id="-", task_id=task_id), metadata=api.metadata
    )
    return answer


async def wait_for_status(api: Api, task_id: str, wanted: str, seconds: float = 20) -> tpb.GetStatusResponse:
    """Poll until the task is in `wanted` (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await status(api, task_id)
        if answer.task.status == wanted or time.monotonic() > deadline:
            assert answer.task.status == wanted, f"still {answer.task.status}"
            return answer
        await asyncio.sleep(0.02)


async def complete(worker: RawWorker, assignment: wpb.Assignment, text: str = "done") -> None:
    ack = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text=text))
    assert ack.code == 0, ack


async def test_backlog_goes_out_by_priority_then_fifo(client: Api, agent_id: str, workers: StartWorker) -> None:
    plan = [(5, "a"), (1, "b"), (9, "c"), (5, "d"), (9, "e"), (10, "f"), (1, "g")]
    ids = {}
    for priority, name in plan:
        ids[(await client.submit(agent_id, name, priority=priority)).task_id] = name
    worker = await workers(agent_id, capacity=1)
    order = []
    for _ in plan:
        assignment = await worker.next_assignment()
        order.append(ids[assignment.task.task_id])
        await complete(worker, assignment)
    assert order == ["f", "c", "e", "a", "d", "b", "g"]


async def test_capacity_is_never_exceeded(client: Api, agent_id: str, workers: StartWorker) -> None:
    for i in range(8):
        await client.submit(agent_id, f"job {i}")
    worker = await workers(agent_id, capacity=3)
    held = [await worker.next_assignment() for _ in range(3)]
    await asyncio.sleep(0.3)  # a chance for a 4th assignment to (wrongly) arrive
    assert worker.assignments.empty()
    await complete(worker, held[0])
    held.append(await worker.next_assignment())
    await asyncio.sleep(0.3)
    assert worker.assignments.empty()
    listed = await client.tasks.ListTasks(
        tpb.ListTasksRequest(agent_id=agent_id, status="running"), metadata=client.metadata
    )
    assert len(listed.tasks) == 3


async def test_each_task_goes_to_exactly_one_of_many_racing_workers(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    pool = [await workers(agent_id, capacity=4) for _ in range(5)]
    submitted = await asyncio.gather(*(client.submit(agent_id, f"job {i}") for i in range(150)))
    assigned: Counter[str] = Counter()
    done = asyncio.Event()

    async def drain(worker: RawWorker) -> None:
        while not done.is_set():
            try:
                assignment = await asyncio.wait_for(worker.assignments.get(), 0.2)
            except TimeoutError:
                continue
            assigned[assignment.task.task_id] += 1
            await complete(worker, assignment)
            if sum(assigned.values()) >= len(submitted):
                done.set()

    await asyncio.wait_for(asyncio.gather(*(drain(w) for w in pool)), 60)
    assert set(assigned) == {s.task_id for s in submitted}
    assert set(assigned.values()) == {1}
    for answer in submitted[:10]:
        assert (await status(client, answer.task_id)).task.status == "completed"


async def test_a_worker_connecting_later_gets_the_backlog(client: Api, agent_id: str, workers: StartWorker) -> None:
    ids = [(await client.submit(agent_id, f"early {i}")).task_id for i in range(3)]
    worker = await workers(agent_id, capacity=5)
    got = {(await worker.next_assignment()).task.task_id for _ in ids}
    assert got == set(ids)


async def test_a_paused_agent_dispatches_nothing_until_resumed(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    ids = [(await client.submit(agent_id, f"backlog {i}")).task_id for i in range(2)]
    await client.agents.PauseAgent(apb.PauseAgentRequest(agent_id=agent_id), metadata=client.metadata)
    worker = await workers(agent_id, capacity=2)
    await asyncio.sleep(0.3)  # a chance for an assignment to (wrongly) arrive
    assert worker.assignments.empty()
    assert [(await status(client, i)).task.status for i in ids] == ["queued", "queued"]
    await client.agents.ResumeAgent(apb.ResumeAgentRequest(agent_id=agent_id), metadata=client.metadata)
    got = {(await worker.next_assignment()).task.task_id for _ in ids}
    assert got == set(ids)


async def test_lost_lease_requeues_with_attempt_plus_one_and_the_zombie_is_refused(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    zombie = await workers(agent_id, capacity=1, heartbeat=False)
    first = await zombie.next_assignment()
    assert first.task.attempt == 1
    # Silent past its lease: the task goes back to the queue and the zombie is told to stop.
    stop = await asyncio.wait_for(zombie.cancels.get(), 20)
    assert (stop.task_id, stop.attempt, stop.reason) == (task_id, 1, "LEASE_LOST")
    healthy = await workers(agent_id, capacity=1)
    second = await healthy.next_assignment()
    assert (second.task.task_id, second.task.attempt) == (task_id, 2)

    late = await zombie.send(complete=wpb.CompleteTask(task=ref(first), text="from the zombie"))
    assert (late.code, reason_of(late)) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "LEASE_LOST")
    await complete(healthy, second, "from the healthy worker")
    task = (await status(client, task_id)).task
    assert (task.status, task.result.text, task.attempt) == ("completed", "from the healthy worker", 2)


async def test_attempts_spent_fail_the_task_with_lease_lost(
    client: Api, workers: StartWorker, service: Service
) -> None:
    agent_id = await client.create_agent("fragile", max_attempts=2)
    task_id = (await client.submit(agent_id)).task_id
    for attempt in (1, 2):
        worker = await workers(agent_id, capacity=1)
        assert (await worker.next_assignment()).task.attempt == attempt
        await worker.vanish()  # the connection drops: its lease is lost at once
    task = (await wait_for_status(client, task_id, "failed")).task
    assert (task.error.code, task.status_reason, task.attempt) == ("LEASE_LOST", "LEASE_LOST", 2)


async def test_a_clean_disconnect_requeues_at_once(client: Api, agent_id: str, workers: StartWorker) -> None:
    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id, capacity=1)
    await worker.next_assignment()
    await worker.close()
    task = (await wait_for_status(client, task_id, "queued")).task
    assert (task.status_reason, task.attempt) == ("LEASE_LOST", 2)


async def test_a_requeued_task_shows_the_next_attempt_and_keeps_the_last_in_its_events(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    first_worker = await workers(agent_id, capacity=1)
    first = await first_worker.next_assignment()
    ack = await first_worker.send(output=wpb.AppendOutput(task=ref(first), chunk="half of attempt 1\n"))
    assert ack.code == 0, ack
    assert (await status(client, task_id)).task.HasField("started_at")
    await first_worker.close()

    # Queued again: attempt 2 has not started and has no output; what attempt 1 did is not
    # shown as if it were the current attempt's.
    task = (await wait_for_status(client, task_id, "queued")).task
    assert (task.attempt, task.status_reason, task.output) == (2, "LEASE_LOST", "")
    assert not task.HasField("started_at") and not task.HasField("progress")

    # Attempt 1's output is still there, as its event: a watch from the start replays it.
    stream = client.tasks.WatchTask(
        tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=1), metadata=client.metadata
    )
    replayed = []
    async for event in stream:
        replayed.append(event)
        if event.type == "status" and event.status == "queued":
            break
    stream.cancel()
    assert [e.output for e in replayed if e.type == "output"] == ["half of attempt 1\n"]
    assert (replayed[-1].attempt, replayed[-1].reason) == (2, "LEASE_LOST")

    second_worker = await workers(agent_id, capacity=1)
    second = await second_worker.next_assignment()
    assert (second.task.attempt, second.task.output) == (2, "")
    task = (await status(client, task_id)).task
    assert task.status == "running" and task.HasField("started_at")


async def test_a_question_with_a_nul_character_is_refused(client: Api, agent_id: str, workers: StartWorker) -> None:
    await client.submit(agent_id)
    worker = await workers(agent_id, capacity=1)
    assignment = await worker.next_assignment()
    ack = await worker.send(request_input=wpb.RequestInput(task=ref(assignment), prompt="which\x00one?"))
    assert (ack.code, reason_of(ack)) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT")
    assert (await status(client, assignment.task.task_id)).task.status == "running"


async def test_input_round_trip_and_messages_in_order(client: Api, agent_id: str, workers: StartWorker) -> None:
    task_id = (await client.submit(agent_id)).task_id
    await client.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="sent while queued"),
        metadata=client.metadata,
    )
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    assert [m.text for m in assignment.messages] == ["sent while queued"]

    ack = await worker.send(request_input=wpb.RequestInput(task=ref(assignment), prompt="Which year?"))
    assert ack.code == 0
    task = (await status(client, task_id)).task
    assert (task.status, task.input_prompt) == ("awaiting_input", "Which year?")
    answer = await client.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="2024"), metadata=client.metadata
    )
    assert answer.status == "running"
    reply = await asyncio.wait_for(worker.deliveries.get(), 10)
    assert (reply.message.text, reply.is_reply) == ("2024", True)
    assert (await status(client, task_id)).task.input_prompt == ""

    for i in range(20):
        await client.tasks.SendMessage(
            tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message=f"note {i}"), metadata=client.metadata
        )
    delivered = [await asyncio.wait_for(worker.deliveries.get(), 10) for _ in range(20)]
    assert [d.message.text for d in delivered] == [f"note {i}" for i in range(20)]
    assert not any(d.is_reply for d in delivered)  # not answers: nothing was asked


async def test_cancel_reaches_a_busy_worker_and_its_late_result_is_refused(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    await worker.send(progress=wpb.ReportProgress(task=ref(assignment), percent=10, text="working"))
    cancelled = await client.tasks.Cancel(
        tpb.CancelRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata
    )
    assert cancelled.task.status == "cancelled"
    stop = await asyncio.wait_for(worker.cancels.get(), 10)
    assert (stop.task_id, stop.reason) == (task_id, "CANCELLED_BY_CLIENT")
    late = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="too late"))
    assert reason_of(late) == "LEASE_LOST"
    assert (await status(client, task_id)).task.status == "cancelled"


async def test_running_past_the_timeout_fails_and_the_worker_is_told(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id, timeout_override=1)).task_id
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    stop = await asyncio.wait_for(worker.cancels.get(), 20)
    assert (stop.task_id, stop.reason) == (task_id, "TIMEOUT")
    task = (await status(client, task_id)).task
    assert (task.status, task.error.code) == ("failed", "TIMEOUT")
    late = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="too late"))
    assert reason_of(late) == "LEASE_LOST"


async def test_time_awaiting_input_does_not_count_against_the_timeout(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id, timeout_override=2)).task_id
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    await worker.send(request_input=wpb.RequestInput(task=ref(assignment), prompt="?"))
    await asyncio.sleep(3)  # longer than the whole running-time bound
    assert (await status(client, task_id)).task.status == "awaiting_input"
    await client.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="go on"), metadata=client.metadata
    )
    # The clock resumes with the time that was left: it does run out eventually.
    task = (await wait_for_status(client, task_id, "failed")).task
    assert task.error.code == "TIMEOUT"


async def test_waiting_too_long_for_input_fails_with_input_timeout(client: Api, workers: StartWorker) -> None:
    agent_id = await client.create_agent("impatient", input_timeout_seconds=1)
    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    await worker.send(request_input=wpb.RequestInput(task=ref(assignment), prompt="anyone?"))
    stop = await asyncio.wait_for(worker.cancels.get(), 20)
    assert stop.reason == "INPUT_TIMEOUT"
    assert (await status(client, task_id)).task.error.code == "INPUT_TIMEOUT"


async def test_worker_reports_are_validated(client: Api, agent_id: str, workers: StartWorker) -> None:
    await client.submit(agent_id)
    worker = await workers(agent_id)
    assignment = await worker.next_assignment()
    bad = [
        {"progress": wpb.ReportProgress(task=ref(assignment), percent=101)},
        {"fail": wpb.FailTask(task=ref(assignment), code="not upper")},
        {"request_input": wpb.RequestInput(task=ref(assignment), prompt="  ")},
        {"hello": wpb.Hello(agent_id=agent_id, capacity=1)},
    ]
    for report in bad:
        ack = await worker.send(**report)
        assert (ack.code, reason_of(ack)) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT")
    unknown = await worker.send(output=wpb.AppendOutput(task=wpb.TaskRef(task_id=agent_id, attempt=1), chunk="x"))
    assert reason_of(unknown) == "LEASE_LOST"


async def test_connect_checks_credentials_agent_and_hello(
    service: Service, client: Api, other_tenant: Api, agent_id: str
) -> None:
    worker_key = await create_api_key(service.store, "default", Role.WORKER)
    client_key = await create_api_key(service.store, "default", Role.CLIENT)
    foreign_agent = await other_tenant.create_agent("theirs")
    other_agent = await client.create_agent("another of ours")
    scoped_key = await create_api_key(service.store, "default", Role.WORKER, agent_id=other_agent)
    cases = [
        (client_key, agent_id, 1, grpc.StatusCode.PERMISSION_DENIED),
        (scoped_key, agent_id, 1, grpc.StatusCode.PERMISSION_DENIED),  # scoped to another agent
        ("atk_0000000000000000_nope_nope_nope_nope_nope", agent_id, 1, grpc.StatusCode.UNAUTHENTICATED),
        (worker_key, foreign_agent, 1, grpc.StatusCode.NOT_FOUND),
        (worker_key, agent_id, 0, grpc.StatusCode.INVALID_ARGUMENT),
        (worker_key, "not-a-uuid", 1, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for key, agent, capacity, code in cases:
        worker = RawWorker(service.address, key, agent, capacity)
        try:
            with pytest.raises((grpc.aio.AioRpcError, AssertionError)):
                await worker.start()
            assert worker.call.code is not None
            assert await worker.call.code() == code
        finally:
            await worker.close()
    scoped = RawWorker(service.address, scoped_key, other_agent, 1)
    try:
        await scoped.start()  # its own agent: welcome
        assert scoped.welcome is not None
    finally:
        await scoped.close()


async def test_every_transition_is_a_watched_event_with_increasing_sequence(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    stream = client.tasks.WatchTask(tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata)
    iterator = aiter(stream)
    assert (await anext(iterator)).type == "snapshot"
    worker = await workers(agent_id)
    a = await worker.next_assignment()
    await worker.send(progress=wpb.ReportProgress(task=ref(a), percent=30, text="reading"))
    await worker.send(output=wpb.AppendOutput(task=ref(a), chunk="line 1\n"))
    await worker.send(request_input=wpb.RequestInput(task=ref(a), prompt="ok?"))
    await client.tasks.SendMessage(
        tpb.SendMessageRequest(agent_id=agent_id, task_id=task_id, message="yes"), metadata=client.metadata
    )
    await asyncio.wait_for(worker.deliveries.get(), 10)
    await worker.send(output=wpb.AppendOutput(task=ref(a), chunk="line 2\n"))
    await complete(worker, a, "all good")
    events = [m async for m in iterator]
    assert [(e.type, e.status) for e in events] == [
        ("status", "running"),
        ("progress", "running"),
        ("output", "running"),
        ("status", "awaiting_input"),
        ("message", "awaiting_input"),
        ("status", "running"),
        ("output", "running"),
        ("status", "completed"),
        ("end", "completed"),
    ]
    assert [e.sequence for e in events[:-1]] == list(range(2, 10))
    assert events[0].attempt == 1
    assert events[1].progress.text == "reading"
    assert events[3].prompt == "ok?"
    assert events[7].result.text == "all good"
    task = (await status(client, task_id)).task
    assert (task.output, task.progress.percent) == ("line 1\nline 2\n", 30)


async def test_output_sent_again_at_its_offset_is_stored_once_and_a_gap_is_refused(
    client: Api, agent_id: str, workers: StartWorker
) -> None:
    """A worker that never heard back about a chunk sends it again at the same offset: it is
    acknowledged and stored once (watchers see it once). A chunk past a gap is refused, naming
    `output.offset`; a report without an offset appends as before."""
    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id)
    a = await worker.next_assignment()

    def output(chunk: str, offset: int | None) -> wpb.AppendOutput:
        return wpb.AppendOutput(task=ref(a), chunk=chunk, offset=offset)

    acks = [
        await worker.send(output=output("héllo ", 0)),
        await worker.send(output=output("héllo ", 0)),  # again: its answer was "lost"
        await worker.send(output=output("world", 7)),  # "héllo " is 7 bytes of UTF-8
        await worker.send(output=output("world", 7)),
    ]
    assert [ack.code for ack in acks] == [0, 0, 0, 0]
    gap = await worker.send(output=output("!", 20))
    assert gap.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "output.offset" in gap.message
    assert (await worker.send(output=wpb.AppendOutput(task=ref(a), chunk="!"))).code == 0  # no offset
    await complete(worker, a)
    assert (await status(client, task_id)).task.output == "héllo world!"
    replay = tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=1)  # every event after created
    outputs = [e.output async for e in client.tasks.WatchTask(replay, metadata=client.metadata) if e.type == "output"]
    assert outputs == ["héllo ", "world", "!"]


async def test_drain_ends_worker_streams_and_gives_their_tasks_back(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id)
    await worker.next_assignment()
    await service.stop()
    await asyncio.wait_for(worker.ended.wait(), 10)
    assert worker.error is None  # the stream ended cleanly, not with an error status
    store = await open_store(service.settings.db)
    try:
        task = await store.read(lambda tx: tx.get_task("default", task_id))
    finally:
        await store.close()
    assert task is not None and (task.status.value, task.status_reason) == ("queued", "LEASE_LOST")


# --- regressions from review ---


async def test_a_cancel_whose_caller_gave_up_still_reaches_the_worker_and_the_watchers(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    from agenttasks.core.model import Principal

    task_id = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id)
    await worker.next_assignment()
    stream = client.tasks.WatchTask(tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=client.metadata)
    iterator = aiter(stream)
    await anext(iterator)  # the snapshot
    # The caller is cancelled right after its write was queued (what gRPC does when a client's
    # deadline passes): the commit stands, so what follows it must happen too.
    caller = asyncio.ensure_future(service.tasks.cancel(Principal("default", Role.CLIENT, "t"), agent_id, task_id))
    await asyncio.sleep(0)
    caller.cancel()
    stop = await asyncio.wait_for(worker.cancels.get(), 10)
    assert stop.reason == "CANCELLED_BY_CLIENT"
    rest = [m async for m in iterator]
    assert [m.type for m in rest][-2:] == ["status", "end"]


async def test_a_report_refused_by_the_store_frees_the_workers_slot(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    from dataclasses import replace

    from agenttasks.core.model import TaskStatus

    first = (await client.submit(agent_id)).task_id
    worker = await workers(agent_id, capacity=1)
    assignment = await worker.next_assignment()

    def ended_elsewhere(tx):  # type: ignore[no-untyped-def]
        # As another replica would: the task ends in the store, and this process hears nothing.
        task = tx.get_task("default", first)
        tx.update_task(replace(task, status=TaskStatus.CANCELLED, worker_id="", lease_expires_at=None))

    await service.store.write(ended_elsewhere)
    late = await worker.send(complete=wpb.CompleteTask(task=ref(assignment), text="x"))
    assert reason_of(late) == "LEASE_LOST"
    second = (await client.submit(agent_id)).task_id
    assert (await worker.next_assignment()).task.task_id == second  # capacity 1 is free again


async def test_reports_keep_all_the_workers_leases_alive(client: Api, agent_id: str, workers: StartWorker) -> None:
    ids = [(await client.submit(agent_id, f"job {i}")).task_id for i in range(2)]
    worker = await workers(agent_id, capacity=2, heartbeat=False)
    a, b = await worker.next_assignment(), await worker.next_assignment()
    for _ in range(12):  # three lease periods, with progress on one task only
        await worker.send(progress=wpb.ReportProgress(task=ref(a), percent=10))
        await asyncio.sleep(0.25)
    assert worker.cancels.empty()
    for task_id in ids:
        task = (await status(client, task_id)).task
        assert (task.status, task.attempt) == ("running", 1), task_id
    assert (await worker.send(complete=wpb.CompleteTask(task=ref(b), text="fine"))).code == 0


async def test_a_start_the_worker_never_heard_of_is_not_kept_alive_by_its_heartbeats(
    service: Service, client: Api, agent_id: str, workers: StartWorker
) -> None:
    """A start can commit although its server saw the COMMIT fail (the database went away under
    it): the worker is never told. Its heartbeats renew only the tasks it was told of, so that
    task's lease runs out and it is queued again, instead of running forever on paper."""
    known, ghost = [(await client.submit(agent_id, f"job {i}")).task_id for i in range(2)]
    worker = await workers(agent_id, capacity=1)
    assignment = await worker.next_assignment()
    assert assignment.task.task_id == known

    def start_behind_its_back(tx: WriteTx) -> None:
        holder = tx.get_task("default", known)
        task = tx.get_task("default", ghost)
        assert holder is not None and task is not None
        now = utcnow()
        save(tx, lifecycle.start(task, now, worker_id=holder.worker_id, lease_until=now + timedelta(seconds=1)))

    await service.store.write(start_behind_its_back)
    for _ in range(200):  # heartbeats go on; the ghost's lease runs out all the same
        if (found := (await status(client, ghost)).task).status == "queued":
            break
        await asyncio.sleep(0.05)
    assert (found.status, found.attempt) == ("queued", 2)
    assert (await status(client, known)).task.status == "running"  # the known one is kept alive
    await complete(worker, assignment)
    again = await worker.next_assignment()
    assert (again.task.task_id, again.task.attempt) == (ghost, 2)
