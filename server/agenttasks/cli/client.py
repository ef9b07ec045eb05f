"""The client side of the CLI: a gRPC channel with credentials, and errors as one clear line."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agenttasks.reach import unreachable
from agenttasks.settings import Settings
from agenttasks.v1 import agent_service_pb2_grpc, task_service_pb2_grpc


class CliError(Exception):
    """A failure to report as one line on stderr, with a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def describe_rpc_error(error: grpc.RpcError, server: str | None = None) -> str:
    """`CODE (REASON): message [field: why]` from a rich status, or the plain details. A plain
    UNAVAILABLE is the channel failing to reach `server` (the address as given), said plainly."""
    code = error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is None:
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        if code == "UNAVAILABLE":
            return unreachable(details or "", server)
        return f"{code}: {details}"
    reason = ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    label = f"{code} ({reason})" if reason and reason != code else code
    return f"{label}: {status.message}"


class Client:
    """Stubs bound to one channel, sending the API key on every call."""

    def __init__(self, settings: Settings) -> None:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise CliError(
                "no credentials: pass --api-key or set AGENTTASKS_API_KEY "
                "(serve prints an admin key on first start; 'agenttasks keys create' makes more)"
            )
        self._metadata = (("authorization", f"Bearer {settings.api_key.get_secret_value()}"),)
        self.channel = grpc.insecure_channel(settings.server)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.agents = agent_service_pb2_grpc.AgentServiceStub(self.channel)
        self.server = settings.server

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credential, as call metadata, for a caller that handles RPC errors itself."""
        return self._metadata

    def call(self, method: Any, request: Any, timeout: float | None = 30.0, **extra: str) -> Any:
        """Call a unary RPC; RPC errors become a CliError with one clear line."""
        metadata = self._metadata + tuple(extra.items())
        with rpc_errors(self.server):
            return method(request, metadata=metadata, timeout=timeout)
        raise AssertionError("unreachable")

    def stream(self, method: Any, request: Any) -> Generator[Any, None, None]:
        with rpc_errors(self.server):
            yield from method(request, metadata=self._metadata)

    def close(self) -> None:
        self.channel.close()


@contextmanager
def rpc_errors(server: str | None = None) -> Iterator[None]:
    """RPC errors raised inside become a CliError; `server` names the address when unreachable."""
    try:
        yield
    except grpc.RpcError as error:
        raise CliError(describe_rpc_error(error, server)) from None
