"""What a handler may raise (TaskFailed) and what reports may raise at it (ReportRejected,
LeaseLost): apart from the context, so the output stream can raise them too."""

from __future__ import annotations


class TaskFailed(Exception):
    """Raise from a handler to fail the task with a stable UPPER_SNAKE `code` the client can act on."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ReportRejected(Exception):
    """The server refused a report: `code` is the gRPC status name, `reason` the ErrorInfo reason."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(f"{code} ({reason}): {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class LeaseLost(ReportRejected):
    """The worker no longer holds the task, so nothing it reports counts any more.

    Raised for an ack with reason LEASE_LOST, for reports after the server cancelled the task
    (reason: the cancel's reason) and after the connection broke (reason DISCONNECTED). The task
    was (or will be) requeued or ended by the server; the handler should just stop.
    """
