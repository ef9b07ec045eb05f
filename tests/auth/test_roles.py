"""The role table: who may call what, checked against the real service descriptors."""

from __future__ import annotations

import pytest

from agenttasks.auth.roles import METHOD_ROLES, allowed_roles, authorize
from agenttasks.core.errors import PermissionDenied
from agenttasks.core.model import Principal, Role
from agenttasks.v1 import agent_service_pb2, task_service_pb2, webhook_service_pb2


def _methods(module: object, service: str) -> list[str]:
    descriptor = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    return [f"/{descriptor.full_name}/{method.name}" for method in descriptor.methods]


TASK_METHODS = _methods(task_service_pb2, "TaskService")
AGENT_METHODS = _methods(agent_service_pb2, "AgentService")
WEBHOOK_METHODS = _methods(webhook_service_pb2, "WebhookService")


def _principal(role: Role) -> Principal:
    return Principal(tenant="acme", role=role, subject="someone")


def test_descriptors_are_found() -> None:
    # Guards the tests below against passing vacuously on an empty method list.
    assert "/agenttasks.v1.TaskService/Submit" in TASK_METHODS
    assert "/agenttasks.v1.AgentService/CreateAgent" in AGENT_METHODS


@pytest.mark.parametrize("method", TASK_METHODS + AGENT_METHODS)
def test_admin_and_client_may_call_every_task_and_agent_method(method: str) -> None:
    authorize(_principal(Role.ADMIN), method)
    authorize(_principal(Role.CLIENT), method)


@pytest.mark.parametrize("method", TASK_METHODS + AGENT_METHODS)
def test_worker_keys_may_not_use_the_task_and_agent_apis(method: str) -> None:
    # Assignments carry what a worker needs; a worker key must not read other tasks of its tenant.
    with pytest.raises(PermissionDenied):
        authorize(_principal(Role.WORKER), method)


def test_method_exceptions_name_real_methods() -> None:
    # A typo in the table would silently fall back to the service rule.
    assert set(METHOD_ROLES) <= set(TASK_METHODS + AGENT_METHODS + WEBHOOK_METHODS)


@pytest.mark.parametrize("method", WEBHOOK_METHODS)
def test_signing_secrets_are_admin_only_deliveries_are_for_clients_too(method: str) -> None:
    authorize(_principal(Role.ADMIN), method)
    with pytest.raises(PermissionDenied):
        authorize(_principal(Role.WORKER), method)
    if method.endswith("SigningSecret"):
        with pytest.raises(PermissionDenied):
            authorize(_principal(Role.CLIENT), method)
    else:
        authorize(_principal(Role.CLIENT), method)


@pytest.mark.parametrize("method", ["/agenttasks.v1.WorkerService/Lease", "/agenttasks.v1.WorkerService/Report"])
def test_worker_service_is_for_admin_and_worker(method: str) -> None:
    authorize(_principal(Role.ADMIN), method)
    authorize(_principal(Role.WORKER), method)
    with pytest.raises(PermissionDenied):
        authorize(_principal(Role.CLIENT), method)


@pytest.mark.parametrize(
    "method",
    [
        "/agenttasks.v1.AdminService/CreateApiKey",
        "/grpc.health.v1.Health/Check",
        "/agenttasks.v2.TaskService/Submit",
        "/agenttasks.v1.TaskService/",
        "/agenttasks.v1.TaskService",
        "agenttasks.v1.TaskService/Submit",
        "/agenttasks.v1.TaskServiceX/Submit",
        "/agenttasks.v1.TaskService/Submit/extra",
        "",
        "/",
    ],
)
def test_anything_unlisted_or_malformed_is_admin_only(method: str) -> None:
    assert allowed_roles(method) == {Role.ADMIN}
    authorize(_principal(Role.ADMIN), method)
    for role in (Role.CLIENT, Role.WORKER):
        with pytest.raises(PermissionDenied):
            authorize(_principal(role), method)


def test_denial_names_role_and_method() -> None:
    with pytest.raises(PermissionDenied) as caught:
        authorize(_principal(Role.WORKER), "/agenttasks.v1.TaskService/Submit")
    assert caught.value.message == "role worker may not call /agenttasks.v1.TaskService/Submit"
