"""End to end: N tasks submitted (64 in flight) while one worker process (capacity 64) completes
them. Throughput is N over the time from the first Submit to the last completion.

Without watchers the last completion is the latest `completed_at` the server stored (read back
through ListTasks once everything is done, which is also the check that all N completed). With
`--watch` every task gets its own WatchTask stream, opened as soon as Submit answers, and the
last completion is when the last stream delivered its end.
"""

from __future__ import annotations

import asyncio
import time

from agenttasks.v1 import task_service_pb2 as pb
from bench import loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.target import Api, Cluster
from bench.workloads.common import submit_request, window

POLL_SECONDS = 0.05
PAGE = 500
# e2e_batch: tasks go in BatchSubmit calls of this many, this many calls in flight (64 tasks
# in flight at most would starve the worker between answers; 4 x 100 keeps it fed).
BATCH = 100
BATCHES_IN_FLIGHT = 4


async def _unfinished(api: Api, agent_id: str) -> bool:
    for status in ("queued", "running"):
        page = await api.tasks.ListTasks(
            pb.ListTasksRequest(agent_id=agent_id, status=status, page_size=1), metadata=api.metadata, timeout=30
        )
        if page.tasks:
            return True
    return False


async def _completions(api: Api, agent_id: str) -> tuple[int, float]:
    """How many tasks completed, and the latest completed_at (epoch seconds)."""
    count, latest, token = 0, 0.0, ""
    while True:
        page = await api.tasks.ListTasks(
            pb.ListTasksRequest(agent_id=agent_id, status="completed", page_size=PAGE, page_token=token),
            metadata=api.metadata,
            timeout=30,
        )
        count += len(page.tasks)
        for task in page.tasks:
            latest = max(latest, task.completed_at.ToNanoseconds() / 1e9)
        if not (token := page.next_page_token):
            return count, latest


async def _watch(api: Api, agent_id: str, task_id: str, ends: list[int]) -> None:
    call = api.tasks.WatchTask(pb.WatchTaskRequest(agent_id=agent_id, task_id=task_id), metadata=api.metadata)
    async for message in aiter(call):
        if message.type == "end":
            if message.reason == "TASK_FINISHED":
                ends.append(loadgen.now_ns())
            return


async def end_to_end(ctx: Context, *, watch: bool = False, batch: int = 0) -> list[Outcome]:
    """With `batch`, tasks are submitted `batch` at a time with BatchSubmit (never watched)."""
    plan = ctx.plan
    name = "e2e_watch" if watch else "e2e_batch" if batch else "e2e"
    workdir = ctx.scratch(name)
    n = plan.tasks
    async with Cluster(ctx, workdir, name) as cluster, cluster.workers(plan.capacity) as workers:
        # Submit calls go round the replicas by slot; each replica has a worker of its own.
        apis = [server.api() for server in cluster.servers]
        api = apis[0]
        agent_id = cluster.agent_id
        request = submit_request(agent_id)
        watchers: set[asyncio.Task[None]] = set()
        ends: list[int] = []

        unsent = n

        async def submit_batch(slot: int) -> None:
            nonlocal unsent
            size = min(batch, unsent)
            unsent -= size
            many = pb.BatchSubmitRequest(agent_id=agent_id, requests=[request] * size)
            to = apis[slot % len(apis)]
            await to.tasks.BatchSubmit(many, metadata=to.metadata, timeout=60)

        async def submit(slot: int) -> None:
            to = apis[slot % len(apis)]
            answer = await to.tasks.Submit(request, metadata=to.metadata, timeout=60)
            if watch:
                task = asyncio.create_task(_watch(to, agent_id, answer.task_id, ends))
                watchers.add(task)
                task.add_done_callback(watchers.discard)

        pids = {**cluster.pids(), "worker": [worker.pid for worker in workers]}
        meter = cluster.backend_cpu()
        async with window(ctx, pids, profile=name, seconds=plan.limit_seconds, postgres=meter) as usage:
            started_wall, started = time.time(), loadgen.now_ns()
            if batch:
                submitted = await loadgen.closed_loop(
                    submit_batch, concurrency=BATCHES_IN_FLIGHT, seconds=plan.limit_seconds, max_calls=-(-n // batch)
                )
            else:
                submitted = await loadgen.closed_loop(
                    submit, concurrency=plan.concurrency, seconds=plan.limit_seconds, max_calls=n
                )
            if watch:
                async with asyncio.timeout(plan.limit_seconds):
                    while watchers:
                        await asyncio.wait(set(watchers))
            else:
                async with asyncio.timeout(plan.limit_seconds):
                    while await _unfinished(api, agent_id):  # noqa: ASYNC110 - the server is another process
                        await asyncio.sleep(POLL_SECONDS)
        completed, last_completed = await _completions(api, agent_id)
        scrapes = {
            "scrapes": sum(server.scrapes for server in cluster.servers),
            "scrape_errors": sum(server.scrape_errors for server in cluster.servers),
        }
    if watch:
        seconds = (max(ends) - started) / 1e9 if ends else float("nan")
    else:
        seconds = last_completed - started_wall
    ctx.discard(workdir)
    submitting = (
        f"BatchSubmit calls of {batch}, {BATCHES_IN_FLIGHT} in flight"
        if batch
        else f"{plan.concurrency} Submits in flight"
    )
    store = "SQLite" if not ctx.on_postgres else "PostgreSQL"
    where = (
        f"one SDK worker process (capacity {plan.capacity})"
        if ctx.replicas == 1
        else f"{ctx.replicas} replicas, calls spread over them, an SDK worker (capacity {plan.capacity}) on each"
    )
    outcome = Outcome(
        name,
        "End to end, one WatchTask per task" if watch else "End to end, BatchSubmit" if batch else "End to end",
        load=f"{n} tasks, {submitting}, {where}; {store}",
        metrics={
            "rate": round(completed / seconds, 1),
            "tasks": n,
            "completed": completed,
            "seconds": round(seconds, 3),
            "submit_errors": submitted.errors,
            **({"watched": len(ends)} if watch else {}),
            # The window runs from the first Submit until all are seen finished.
            **usage.cpu_us_per_task(completed),
            "replicas": ctx.replicas,
            **usage.metrics,
        },
        details={**usage.details, **(scrapes if ctx.metrics else {}), "first_error": submitted.first_error},
    )
    if completed != n or submitted.errors or (watch and len(ends) != n):
        outcome.status = "failed"
        outcome.reason = f"{completed} of {n} completed, {submitted.errors} Submit errors: {submitted.first_error}"
    return [outcome]


async def end_to_end_watched(ctx: Context) -> list[Outcome]:
    return await end_to_end(ctx, watch=True)


async def end_to_end_batched(ctx: Context) -> list[Outcome]:
    return await end_to_end(ctx, batch=BATCH)
