"""`agenttasks serve`: run the service in the foreground until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sqlite3
from typing import Any

from agenttasks.app import Service, StartupError
from agenttasks.cli.client import CliError
from agenttasks.gateway import Gateway, GatewayError, check_port, envoy_binary
from agenttasks.heap import freeze_startup_objects
from agenttasks.observe import logs, tracing
from agenttasks.settings import Settings
from agenttasks.store import shown_url

log = logging.getLogger("agenttasks")


def check_bindable(host: str, port: int) -> None:
    """Fail with one clear line if gRPC could not listen on host:port, before anything starts.

    Checked up front for two reasons: gRPC's C core logs its own error lines straight to stderr
    when a bind fails, and `Service.start` opens the database (issuing the first-start admin key)
    before it binds, so a clash on the first start would use up the key without showing it.
    """
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise CliError(f"cannot listen on {where} for gRPC: cannot resolve {host!r}: {error}") from None
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                probe.bind(address)
            return  # gRPC listens if it can bind at least one of the addresses
        except OSError as error:
            failures.append(error)
    reason = failures[0].strerror if failures else "no address to bind"
    raise CliError(f"cannot listen on {where} for gRPC: {reason}")


def _show_bootstrap_key(service: Service) -> None:
    """The admin key a first start made, on stdout only (never in a log), once."""
    if service.bootstrap_key:
        print("first start: an admin API key for tenant 'default' was made; it is shown only this once:")
        print(f"admin api key: {service.bootstrap_key}", flush=True)


async def run(settings: Settings) -> int:
    check_bindable(settings.grpc_host, settings.grpc_port)
    if settings.gateway:  # before the service starts, for the same reasons as check_bindable
        try:
            envoy_binary()
            check_port(settings.http_host, settings.http_port)
        except GatewayError as error:
            raise CliError(str(error)) from None
    service = Service(settings)
    try:
        await service.start()
    except StartupError as error:
        raise CliError(str(error)) from None
    except ValueError as error:  # a setting the service cannot use: the store URL, the JWT key
        raise CliError(f"cannot start: {error}") from None
    except (sqlite3.Error, OSError) as error:
        raise CliError(f"cannot open the database {shown_url(settings.db)}: {error}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"agenttasks gRPC listening on {service.address}", flush=True)
    if service.metrics is not None:
        print(f"agenttasks metrics on {service.metrics.url}", flush=True)
    gateway: Gateway | None = None
    if settings.gateway:
        stats = (settings.metrics_host, settings.gateway_metrics_port) if settings.gateway_metrics_port else None
        gateway = Gateway(
            settings.http_host,
            settings.http_port,
            upstreams=[(settings.grpc_host, service.port)],
            access_log=logs.access_on(),
            stats=stats,
        )
        try:
            await gateway.start()
        except GatewayError as error:
            _show_bootstrap_key(service)  # made by this start: it must not be lost with it
            await service.stop()
            raise CliError(str(error)) from None
        if not settings.public_base_url:  # the real address, even when the port was 0
            service.tasks.base_url = gateway.url
        print(f"agenttasks REST listening on {gateway.url}", flush=True)
        if gateway.stats_url:
            print(f"agenttasks gateway metrics on {gateway.stats_url}", flush=True)
    print(f"agenttasks database {shown_url(settings.db)}", flush=True)
    _show_bootstrap_key(service)
    log.debug("froze %d start-up objects out of garbage collection", freeze_startup_objects())
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    failed: asyncio.Future[Any] = service.supervisor.failed
    watched: list[asyncio.Future[Any]] = [waiter, failed] + ([gateway.exited] if gateway else [])
    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if service.supervisor.failed in done:
        logs.say(f"agenttasks: stopping: {service.supervisor.failed.result()}", logging.ERROR)
        code = 1
    elif gateway is not None and gateway.exited in done:
        logs.say(f"agenttasks: stopping: {gateway.describe_exit()}", logging.ERROR)
        code = 1
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    logs.say("agenttasks: draining")
    await service.stop()
    if gateway is not None:  # after gRPC drained, so REST calls in flight got their answers
        await gateway.stop()
    logs.say("agenttasks: stopped")
    return code


def serve(settings: Settings) -> int:
    logs.configure(settings.log_format, settings.log_level, settings.access_log)
    tracing.setup_from_env("agenttasks", force=settings.tracing)
    try:
        return asyncio.run(run(settings))
    finally:
        tracing.shutdown()  # exports the spans still buffered
