"""`agenttasks gateway --upstream HOST:PORT[,HOST:PORT...]`: Envoy alone, in front of replicas.

Several `agenttasks serve --no-gateway` processes on one store act as one service behind it:
REST (the same contract as serve's gateway) and native gRPC each on one address, calls spread
round robin over the replicas that pass their gRPC health checks, and calls that a replica
refused or never got sent to another (docs/gateway.md, "One front for many replicas"). It needs
no database: every answer comes from a replica.

It prints its real addresses on stdout, logs replicas leaving and rejoining the rotation on
stderr, and stops on SIGTERM or SIGINT after the calls in flight finish (up to the shutdown grace
period). If Envoy dies, it says why in one line and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from agenttasks.cli.client import CliError
from agenttasks.observe import logs
from agenttasks.settings import Settings

if TYPE_CHECKING:  # the gateway package (YAML, descriptors) is imported only when the command runs
    from agenttasks.gateway import Gateway, Upstream

log = logging.getLogger("agenttasks.gateway")

HELP = "Run the REST and gRPC front (Envoy) alone, in front of several 'serve --no-gateway' replicas."
EPILOG = """\
what it does:
  REST on --http-host:--http-port, the same contract as 'serve' answers, and native gRPC on
  --grpc-front-host:--grpc-front-port (every service, worker streams included), both spread
  round robin over the replicas. Each replica's grpc.health.v1 is checked every second: one
  that answers NOT_SERVING (it is draining after SIGTERM) leaves the rotation at once, one
  that does not answer twice in a row, or fails 3 calls in a row on the way, leaves too, and
  it comes back with its next SERVING answer. A call a replica refused before doing any work
  (UNAVAILABLE) or that never reached one goes to another, at most twice; a write cut off in
  the middle does not, since it may have done its work (a read does).
  It needs no database. SIGTERM or SIGINT stops it after the calls in flight finish
  (AGENTTASKS_SHUTDOWN_GRACE_SECONDS at most); if Envoy dies it exits 1.

example (three replicas on one PostgreSQL database, one front):
  export AGENTTASKS_DB=postgresql://postgres@127.0.0.1/agenttasks
  export AGENTTASKS_PUBLIC_BASE_URL=http://127.0.0.1:8080   # links in answers name the front
  agenttasks serve --no-gateway --grpc-port 50051 &
  agenttasks serve --no-gateway --grpc-port 50052 &
  agenttasks serve --no-gateway --grpc-port 50053 &
  agenttasks gateway --upstream 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053

Host names in --upstream are resolved once, at start. docs/gateway.md has the details.
"""
WATCH_SECONDS = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--upstream",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the gRPC replicas to serve, comma-separated; IPv6 in brackets (env AGENTTASKS_UPSTREAM; required)",
    )
    p.add_argument("--http-host", help="address to bind REST (env AGENTTASKS_HTTP_HOST; default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST port (env AGENTTASKS_HTTP_PORT; default 8080; 0 picks one)")
    p.add_argument(
        "--grpc-front-host", help="address to bind native gRPC (env AGENTTASKS_GRPC_FRONT_HOST; default 127.0.0.1)"
    )
    p.add_argument(
        "--grpc-front-port",
        type=int,
        help="native gRPC port (env AGENTTASKS_GRPC_FRONT_PORT; default 50050; 0 picks one)",
    )
    p.add_argument(
        "--gateway-metrics-port",
        type=int,
        help="serve Envoy's own statistics at /stats/prometheus on this port "
        "(env AGENTTASKS_GATEWAY_METRICS_PORT; default 0: off)",
    )
    p.add_argument("--metrics-host", help="address that port binds (env AGENTTASKS_METRICS_HOST; default 127.0.0.1)")


# Envoy's health flags (admin /clusters) in words; others are shown with spaces for underscores.
_REASONS = {
    "failed_active_health_check": "failed its health check",
    "active_hc_timeout": "its health check timed out",
    "failed_outlier_check": "calls to it failed",
}


def _describe(upstream: Upstream) -> str:
    if upstream.healthy:
        return f"replica {upstream.address} is in rotation"
    reasons = [_REASONS.get(flag, flag.replace("_", " ")) for flag in upstream.out_because]
    return f"replica {upstream.address} is out of rotation ({', '.join(reasons) or 'not healthy'})"


async def _watch_replicas(gateway: Gateway) -> None:
    """Log each replica that leaves or rejoins the rotation: the operator's view of what the
    health checks and ejections decided (Envoy's admin has the numbers)."""
    from agenttasks.gateway import GatewayError

    known: dict[str, bool] = {}
    while True:
        try:
            upstreams = await gateway.upstream_status()
        except GatewayError:  # Envoy is stopping or gone: its exit is reported elsewhere
            upstreams = []
        for upstream in upstreams:
            if known.get(upstream.address, True) != upstream.healthy:
                log.log(logging.INFO if upstream.healthy else logging.WARNING, "%s", _describe(upstream))
            known[upstream.address] = upstream.healthy
        await asyncio.sleep(WATCH_SECONDS)


def _upstreams(settings: Settings) -> list[tuple[str, int]]:
    """The replicas from --upstream, checked and resolved before Envoy starts: a mistake there
    is a usage error (exit 2), said in one line."""
    from agenttasks.gateway import GatewayError, parse_upstreams, resolve_upstreams

    try:
        upstreams = parse_upstreams(settings.upstream)
        resolve_upstreams(upstreams)
    except GatewayError as error:
        raise CliError(f"{error} (see 'agenttasks gateway --help')", exit_code=2) from None
    return upstreams


async def run_gateway(settings: Settings) -> int:
    from agenttasks.gateway import Gateway, GatewayError, envoy_binary

    upstreams = _upstreams(settings)
    try:
        envoy_binary()
    except GatewayError as error:
        raise CliError(str(error)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(
        settings.http_host,
        settings.http_port,
        upstreams=upstreams,
        grpc_front=(settings.grpc_front_host, settings.grpc_front_port),
        stats=(settings.metrics_host, settings.gateway_metrics_port) if settings.gateway_metrics_port else None,
        drain_seconds=settings.shutdown_grace_seconds,
        access_log=logs.access_on(),
    )
    try:
        await gateway.start()
    except GatewayError as error:
        raise CliError(str(error)) from None
    print(f"agenttasks REST listening on {gateway.url}", flush=True)
    print(f"agenttasks gRPC front listening on {gateway.grpc_front_address}", flush=True)
    if gateway.stats_url:
        print(f"agenttasks gateway metrics on {gateway.stats_url}", flush=True)
    print(f"agenttasks upstreams {', '.join(f'{host}:{port}' for host, port in upstreams)}", flush=True)
    log.info("Envoy admin (per-replica health and counts: /clusters) on http://%s", gateway.admin_address)
    watcher = asyncio.create_task(_watch_replicas(gateway), name="watch-replicas")
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, gateway.exited], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if gateway.exited in done:
        logs.say(f"agenttasks: stopping: {gateway.describe_exit()}", logging.ERROR)
        code = 1
    for task in (watcher, waiter):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if code == 0:
        logs.say("agenttasks: draining")
        left = await gateway.drain(settings.shutdown_grace_seconds)
        if left:
            log.info("%d calls still open after %gs (streams): cut", left, settings.shutdown_grace_seconds)
    await gateway.stop()
    logs.say("agenttasks: stopped")
    return code


def run(settings: Settings, args: argparse.Namespace) -> int:
    logs.configure(settings.log_format, settings.log_level, settings.access_log)
    return asyncio.run(run_gateway(settings))
