"""`agenttasks serve`: run the service in the foreground until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from agenttasks.app import Service, StartupError
from agenttasks.cli.client import CliError
from agenttasks.settings import Settings

log = logging.getLogger("agenttasks")


async def run(settings: Settings) -> int:
    service = Service(settings)
    try:
        await service.start()
    except StartupError as error:
        raise CliError(str(error)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"agenttasks gRPC listening on {service.address}", flush=True)
    print(f"database: {settings.db}", flush=True)
    if settings.gateway:
        print("REST gateway: not started (the Envoy gateway is not part of this build yet); gRPC only", flush=True)
    if service.bootstrap_key:
        print("first start: an admin API key for tenant 'default' was created; it is shown only once:", flush=True)
        print(f"admin api key: {service.bootstrap_key}", flush=True)
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    failed: asyncio.Future[Any] = service.supervisor.failed
    done, _ = await asyncio.wait([waiter, failed], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if service.supervisor.failed in done:
        print(f"agenttasks: stopping: {service.supervisor.failed.result()}", file=sys.stderr, flush=True)
        code = 1
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    print("agenttasks: draining", file=sys.stderr, flush=True)
    await service.stop()
    print("agenttasks: stopped", file=sys.stderr, flush=True)
    return code


def serve(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(settings))
