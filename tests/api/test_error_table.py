"""The error table: complete, and consistent with what Envoy makes of each gRPC code."""

from __future__ import annotations

from agenttasks.api.errors import ERROR_TABLE
from agenttasks.core import errors as domain_errors


def test_every_domain_error_has_a_row_in_the_error_table() -> None:
    classes = {
        obj
        for obj in vars(domain_errors).values()
        if isinstance(obj, type)
        and issubclass(obj, domain_errors.DomainError)
        and obj not in (domain_errors.DomainError, domain_errors.RetryLater)  # bases, never raised as such
    }
    assert classes <= set(ERROR_TABLE), classes - set(ERROR_TABLE)


def test_error_table_http_statuses_match_envoys_mapping() -> None:
    # Envoy's grpc_json_transcoder mapping of gRPC codes (GATEWAY-FACTS.md).
    envoy = {
        "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409,
        "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNIMPLEMENTED": 501,
        "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
    }  # fmt: skip
    for cls, row in ERROR_TABLE.items():
        assert envoy[row.code.name] == row.http_status, cls
        assert row.reason.isupper() and " " not in row.reason
