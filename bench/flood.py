"""The flooding tenant of the `isolation` workload: one process that opens thousands of watch
streams and then calls Submit as fast as it can, ignoring every refusal.

It opens `--watches` WatchTask streams spread over its keys (each key may hold at most the
server's per-credential cap), prints `flooding` once all of them have their snapshot, floods for
`--seconds`, then prints one JSON line of counts: calls answered, refused by code, streams open.

    BENCH_FLOOD_KEYS=key1,key2,... python -m bench.flood --server HOST:PORT --agent ID \\
        --watches 3000 --concurrency 64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from collections import Counter
from typing import Any

import grpc

from agenttasks.v1 import task_service_pb2 as pb
from agenttasks.v1 import task_service_pb2_grpc
from bench import loadgen

STREAMS_PER_CHANNEL = 1000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--agent", required=True, help="an agent of the flooding tenant")
    parser.add_argument("--watches", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64, help="Submit calls in flight at once")
    parser.add_argument("--seconds", type=float, default=10.0)
    return parser.parse_args()


async def flood(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    metadata = [(("authorization", f"Bearer {key}"),) for key in keys]
    channels = [loadgen.channel(args.server) for _ in range(max(1, math.ceil(args.watches / STREAMS_PER_CHANNEL)))]
    stubs = [task_service_pb2_grpc.TaskServiceStub(channel) for channel in channels]
    submit = pb.SubmitRequest(agent_id=args.agent, message="flood")

    # One task per key to watch (a task of the key's own tenant), then the streams.
    watched = [(await stubs[0].Submit(submit, metadata=m, timeout=30)).task_id for m in metadata]
    calls: list[Any] = []
    snapshots = 0
    opened = asyncio.Event()

    async def watch(i: int) -> None:
        nonlocal snapshots
        who = i % len(keys)
        request = pb.WatchTaskRequest(agent_id=args.agent, task_id=watched[who])
        call = stubs[i // STREAMS_PER_CHANNEL].WatchTask(request, metadata=metadata[who])
        calls.append(call)
        try:
            async for _ in call:
                snapshots += 1
                if snapshots == args.watches:
                    opened.set()
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.CANCELLED:
                raise

    watchers = [asyncio.create_task(watch(i)) for i in range(args.watches)]
    await asyncio.wait_for(opened.wait(), 120)
    print("flooding", flush=True)

    codes: Counter[str] = Counter()
    deadline = loadgen.now_ns() + int(args.seconds * 1e9)

    async def submitter(slot: int) -> None:
        stub, who = stubs[slot % len(stubs)], metadata[slot % len(metadata)]
        while loadgen.now_ns() < deadline:
            try:
                await stub.Submit(submit, metadata=who, timeout=30)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1

    await asyncio.gather(*(submitter(slot) for slot in range(args.concurrency)))
    for call in calls:
        call.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    for channel in channels:
        await channel.close(grace=None)
    return {"calls": sum(codes.values()), "codes": dict(codes), "streams": args.watches, "seconds": args.seconds}


def main() -> None:
    args = parse()
    keys = [key for key in os.environ.get("BENCH_FLOOD_KEYS", "").split(",") if key]
    if not keys:
        raise SystemExit("BENCH_FLOOD_KEYS must hold the flooding tenant's keys, comma-separated")
    print(json.dumps(loadgen.run(flood(args, keys))), flush=True)


if __name__ == "__main__":
    main()
