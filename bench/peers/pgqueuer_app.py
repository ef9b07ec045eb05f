"""The pgqueuer peer's consumer: one process running pgqueuer's `QueueManager` on the database
named by `--dsn`, with one entrypoint, `finish`, that does nothing (as the bench's worker
completes each task at once). pgqueuer moves each finished job from its queue table to its log
table (status `successful`), in batches; the harness counts those rows.

    python -m bench.peers.pgqueuer_app --dsn postgresql://...

It prints `pgqueuer consumer running` once it has started, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import psycopg
from pgqueuer import Job, QueueManager
from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
from pgqueuer.queries import Queries

ENTRYPOINT = "finish"
BATCH_SIZE = 10
"""Jobs per dequeue: pgqueuer's default."""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args()
    # pgqueuer needs autocommit; LISTEN and the queries share this one connection, as in its examples.
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as connection:
        manager = QueueManager(Queries(PsycopgDriver(connection)))

        @manager.entrypoint(ENTRYPOINT)
        async def finish(job: Job) -> None:
            return None

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, manager.shutdown.set)
        print("pgqueuer consumer running", flush=True)
        await manager.run(batch_size=args.batch_size)


if __name__ == "__main__":
    asyncio.run(main())
