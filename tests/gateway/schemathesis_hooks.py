"""The project's own schemathesis check, loaded by the run in test_schemathesis.py
(SCHEMATHESIS_HOOKS=tests.gateway.schemathesis_hooks).

A schema-valid request may be refused only for the state it finds, never for its shape: every
400 or 5xx answer to one must carry one of the error table's state reasons (a message to a
finished task, a submit to an agent that takes no tasks). INVALID_ARGUMENT, the answer to a bad
request, is never one of them, in any phase.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis

from agenttasks.api.errors import ERROR_TABLE
from agenttasks.core.errors import AgentUnavailable, TaskFinished

STATE_REFUSALS = {
    ERROR_TABLE[error].http_status: ERROR_TABLE[error].reason for error in (TaskFinished, AgentUnavailable)
}
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@schemathesis.check
def refused_only_for_state(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status != 400 and status < 500:
        return None
    try:
        body = json.loads(response.text)
        reasons = [d.get("reason") for d in body.get("details", []) if d.get("@type") == ERROR_INFO]
    except (ValueError, AttributeError):
        body, reasons = response.text[:300], []
    if STATE_REFUSALS.get(status) not in reasons:
        raise AssertionError(f"schema-valid request refused with {status} {reasons}, not for its state: {body}")
    return True
