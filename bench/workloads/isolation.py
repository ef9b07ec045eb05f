"""Tenant isolation: a quiet tenant's unary latency, alone and while another tenant floods.

One server runs with its default limits (rate per credential, watch streams per credential,
queued tasks per tenant): the limits are what is measured. A quiet tenant calls Submit and
GetStatus in turn, open loop at `isolation_rate` calls/s, first on an idle server (the baseline),
then while a flooding tenant (`bench.flood`, a process of its own) holds thousands of open
WatchTask streams and calls Submit from `concurrency` calls in flight, as fast as the server
answers, ignoring refusals. Issue 15's goal: the quiet tenant's p99 within 1.5x of the unloaded
figure, measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as pb
from bench import USER_ENV, loadgen
from bench.outcome import Outcome
from bench.plan import Context
from bench.procs import Proc, ProcError, cpu_sample
from bench.target import STARTUP_SECONDS, Api, Server
from bench.workloads.common import MESSAGE


async def _create_key(db: str, tenant: str) -> str:
    """A client key of `tenant`, made by the CLI as an operator would."""
    command = [sys.executable, "-m", "agenttasks.cli.main", "keys", "create", "--db", db, "--tenant", tenant]
    env = {k: v for k, v in USER_ENV.items() if not k.startswith("AGENTTASKS_")}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise ProcError(f"keys create failed: {err.decode(errors='replace')[-500:]}")
    return out.decode().strip().splitlines()[-1]


async def _create_agent(api: Api) -> str:
    answer = await api.agents.CreateAgent(apb.CreateAgentRequest(name="isolation"), metadata=api.metadata, timeout=30)
    return str(answer.agent.agent_id)


async def _probe(api: Api, agent_id: str, rate: float, seconds: float) -> tuple[list[int], int]:
    """Submit and GetStatus in turn, `rate` calls/s open loop, for `seconds`: (latencies ns, errors)."""
    submit = pb.SubmitRequest(agent_id=agent_id, message=MESSAGE)
    task_id = (await api.tasks.Submit(submit, metadata=api.metadata, timeout=30)).task_id
    status = pb.GetStatusRequest(agent_id=agent_id, task_id=task_id)
    samples: list[int] = []
    errors = 0

    async def call(i: int) -> None:
        nonlocal errors
        t0 = loadgen.now_ns()
        try:
            if i % 2:
                await api.tasks.GetStatus(status, metadata=api.metadata, timeout=30)
            else:
                await api.tasks.Submit(submit, metadata=api.metadata, timeout=30)
        except Exception:
            errors += 1
            return
        samples.append(loadgen.now_ns() - t0)

    start = loadgen.now_ns()
    calls = []
    for i in range(round(rate * seconds)):
        due = start + int(i / rate * 1e9)
        if (wait := due - loadgen.now_ns()) > 0:
            await asyncio.sleep(wait / 1e9)
        calls.append(asyncio.create_task(call(i)))
    await asyncio.gather(*calls)
    return samples, errors


async def isolation(ctx: Context) -> list[Outcome]:
    plan = ctx.plan
    workdir = ctx.scratch("isolation")
    seconds, rate = plan.isolation_seconds, plan.isolation_rate
    async with ctx.database(workdir, "isolation") as db, Server(workdir, db=db, limits=True) as server:
        quiet_key, flood_keys = await _create_key(db, "quiet"), [await _create_key(db, "flood") for _ in range(3)]
        quiet = server.api(quiet_key)
        quiet_agent = await _create_agent(quiet)
        flooder = server.api(flood_keys[0])
        flood_agent = await _create_agent(flooder)

        await _probe(quiet, quiet_agent, rate, min(1.0, seconds))  # warm-up, not measured
        alone, alone_errors = await _probe(quiet, quiet_agent, rate, seconds)

        command = [
            sys.executable,
            "-m",
            "bench.flood",
            "--server",
            server.address,
            "--agent",
            flood_agent,
            "--watches",
            str(plan.isolation_watches),
            "--concurrency",
            str(plan.concurrency),
            "--seconds",
            str(seconds + 2.0),
        ]
        async with Proc("flood", command, workdir, env={"BENCH_FLOOD_KEYS": ",".join(flood_keys)}) as flood:
            await flood.wait_for_line(r"^flooding", STARTUP_SECONDS + 120)
            await asyncio.sleep(0.5)  # the flood at full speed before the measurement starts
            cpu0 = cpu_sample(server.pid).total
            loaded, loaded_errors = await _probe(quiet, quiet_agent, rate, seconds)
            server_cpu = cpu_sample(server.pid).total - cpu0
            counts = json.loads((await flood.wait_for_line(r"^(\{.*\})$", seconds + 60)).group(1))
    ctx.discard(workdir)

    refused = sum(n for code, n in counts["codes"].items() if code != "OK")
    load = (
        f"quiet tenant: Submit and GetStatus in turn, {rate:g} calls/s open loop, {seconds:g} s; "
        f"flooding tenant: {plan.isolation_watches:,} open WatchTask streams over 3 keys and "
        f"{plan.concurrency} Submit calls in flight, default limits"
    )
    return [
        Outcome(
            "isolation_unloaded",
            "quiet tenant's unary calls, server otherwise idle",
            load=load,
            metrics={**_latency(alone), "errors": alone_errors},
        ),
        Outcome(
            "isolation",
            "quiet tenant's unary calls while another tenant floods",
            load=load,
            metrics={
                **_latency(loaded),
                "errors": loaded_errors,
                "server_cpu_share": server_cpu / seconds,
                "flood_calls_per_second": counts["calls"] / counts["seconds"],
                "flood_refused_share": refused / max(1, counts["calls"]),
            },
            details={"flood_codes": counts["codes"]},
        ),
    ]


def _latency(samples: list[int]) -> dict[str, float]:
    return {**loadgen.latency_ms(samples), "calls": float(len(samples))}
