"""Which roles may call which RPC: one table, checked after authentication.

Rules are looked up by the full method name first, then by its service; a method in neither
is admin-only, so a new service or an unlisted method is closed until someone opens it here.
"""

from __future__ import annotations

from collections.abc import Mapping

from agenttasks.core.errors import PermissionDenied
from agenttasks.core.model import Principal, Role

_ADMIN_ONLY = frozenset({Role.ADMIN})
_CLIENTS = frozenset({Role.ADMIN, Role.CLIENT})
_WORKERS = frozenset({Role.ADMIN, Role.WORKER})

SERVICE_ROLES: Mapping[str, frozenset[Role]] = {
    "agenttasks.v1.TaskService": _CLIENTS,
    "agenttasks.v1.AgentService": _CLIENTS,
    "agenttasks.v1.WorkerService": _WORKERS,
}
"""Roles allowed on every method of a service, keyed by the fully qualified service name."""

METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    # The delivery log and retries are the client's business; signing secrets stay admin-only
    # (WebhookService is not in SERVICE_ROLES, so its other methods fall to admin).
    "/agenttasks.v1.WebhookService/ListWebhookDeliveries": _CLIENTS,
    "/agenttasks.v1.WebhookService/RetryWebhookDelivery": _CLIENTS,
}
"""Exceptions to `SERVICE_ROLES` for single methods, keyed by the full gRPC method name."""


def allowed_roles(method: str) -> frozenset[Role]:
    """The roles that may call `method` (a full gRPC name like `/agenttasks.v1.TaskService/Submit`)."""
    if method in METHOD_ROLES:
        return METHOD_ROLES[method]
    service, slash, name = method.removeprefix("/").partition("/")
    if method.startswith("/") and slash and name and "/" not in name:
        return SERVICE_ROLES.get(service, _ADMIN_ONLY)
    return _ADMIN_ONLY


def authorize(principal: Principal, method: str) -> None:
    """Raises PermissionDenied unless the principal's role may call `method`."""
    if principal.role not in allowed_roles(method):
        raise PermissionDenied(f"role {principal.role.value} may not call {method}")
