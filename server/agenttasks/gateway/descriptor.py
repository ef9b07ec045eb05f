"""The FileDescriptorSet Envoy's gRPC-JSON transcoder reads, built without protoc.

The generated `agenttasks.v1.*_pb2` modules embed their `FileDescriptorProto` (a test keeps them
equal to what protoc makes of `proto/`), so the set is assembled from them at run time and a plain
`pip install .` (no grpcio-tools) can serve REST. Dependencies are walked from the services' files
and written dependencies-first, the order Envoy's descriptor pool needs.

Two adjustments, both for Envoy 1.40:
- `google/rpc/error_details.proto` is added although no service file imports it: the server's
  errors carry `ErrorInfo` and `BadRequest` in `grpc-status-details-bin`, and a transcoder whose
  descriptor lacks those types answers such errors with an EMPTY body.
- `response_body` is removed from the HTTP rules: the transcoder refuses to load a method that
  sets it to a non-HttpBody field. The gateway's Lua filter does its job instead (see
  `response_bodies` and rest.lua), so REST clients get the answer the annotation promises.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2

from agenttasks.v1 import agent_service_pb2, task_service_pb2

SERVICES: tuple[ServiceDescriptor, ...] = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
)
"""The services with `google.api.http` annotations: what REST clients can reach."""

_ROOTS: tuple[FileDescriptor, ...] = (
    *(service.file for service in SERVICES),
    # Types the transcoder must know to render error bodies; see the module docstring.
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)


def _dependencies_first(roots: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for root in roots:
        visit(root)
    return ordered


def response_bodies() -> dict[str, str]:
    """`{"/package.Service/Method": field}` for every method annotated with `response_body`.

    Each such field must be the response message's only field: the Lua filter unwraps the
    transcoder's `{"field": value}` text, which is exact only then. A method that breaks this
    fails here, at build time, rather than answering a half-unwrapped body.
    """
    found: dict[str, str] = {}
    for service in SERVICES:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            fields = {rule.response_body, *(b.response_body for b in rule.additional_bindings)} - {""}
            if not fields:
                continue
            if len(fields) > 1:
                raise ValueError(f"{method.full_name}: bindings disagree on response_body: {sorted(fields)}")
            (field,) = fields
            names = [f.name for f in method.output_type.fields]
            if names != [field]:
                raise ValueError(
                    f"{method.full_name}: response_body {field!r} must be the only field of "
                    f"{method.output_type.full_name} (it has {names}) for the gateway to unwrap it"
                )
            found[f"/{service.full_name}/{method.name}"] = field
    return found


def _drop_response_body(file: descriptor_pb2.FileDescriptorProto) -> None:
    for service in file.service:
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            rule = method.options.Extensions[annotations_pb2.http]
            rule.response_body = ""
            for binding in rule.additional_bindings:
                binding.response_body = ""


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The services' files and everything they import, dependencies first, for Envoy."""
    response_bodies()  # refuse annotations the gateway could not honour
    files = []
    for file in _dependencies_first(_ROOTS):
        proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
        _drop_response_body(proto)
        files.append(proto)
    return descriptor_pb2.FileDescriptorSet(file=files)


def write_descriptor_set(path: Path) -> Path:
    """Write the serialized set to `path` (parents created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(descriptor_set().SerializeToString())
    return path
