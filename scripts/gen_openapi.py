"""Generate docs/openapi.json, the OpenAPI 3 document of the REST surface, or check that it is current.

The REST surface is what Envoy's gRPC-JSON transcoder serves from the `google.api.http`
annotations, so the document is derived from the same descriptors: those compiled into the
generated `agenttasks.v1.*_pb2` modules (never by parsing .proto text). The modules carry no
comments, so protoc compiles proto/ once more with `--include_source_info` for the descriptions;
that copy must equal the modules' descriptors (else the modules drifted: run gen_proto.py first).

JSON follows the transcoder's rendering (GATEWAY-FACTS): proto field names (snake_case), int64 as
strings, Timestamp as RFC 3339, Struct as an object, enums by name, `response_body`, errors as
google.rpc.Status JSON. Error statuses and reasons come from the server's one error table.

What each request field must be (ranges, lengths, patterns, enums) comes from the table the
server's checks read, agenttasks.core.field_rules, for a server with the default settings;
request bodies declare `additionalProperties: false` because the server refuses unknown body
fields. Responses of the operations that make a resource carry OpenAPI links to the operations
on it, for clients and for schemathesis' stateful tests.

Usage: python scripts/gen_openapi.py [--check]
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import pkgutil
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc_tools  # type: ignore[import-untyped, unused-ignore]
from google.api import annotations_pb2, field_behavior_pb2, http_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2

import agenttasks.v1
from agenttasks.api.errors import ERROR_TABLE, INTERNAL
from agenttasks.core.errors import InvalidArgument, RetryLater, Why
from agenttasks.core.field_rules import Rule, field_rules
from agenttasks.core.model import CallbackMode
from agenttasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "docs" / "openapi.json"
PACKAGE = "agenttasks.v1"

# The transcoder answers 200 to every unary call; the gateway's Lua filter turns Submit's 200 into
# 202 (DESIGN section 3). This table is the only REST fact the descriptors cannot tell.
SUCCESS_STATUS = {f"{PACKAGE}.TaskService.Submit": "202"}
# AIP-155: a request with this field is idempotent, and a reused key with another body answers 409.
IDEMPOTENCY_FIELD = "request_id"
# Requests that name one task, whose agent may be given as "-" (field_rules.ANY_AGENT).
TASK_NAMED_REQUESTS = frozenset({"GetStatusRequest", "SendMessageRequest", "CancelRequest", "WatchTaskRequest"})
# The operations that make a resource: their answers link to the operations on it (OpenAPI links).
LINK_SOURCES = frozenset({f"{PACKAGE}.AgentService.CreateAgent", f"{PACKAGE}.TaskService.Submit"})

Schema = dict[str, Any]
LocationPath = tuple[int, ...]  # where a definition is in its file, as SourceCodeInfo paths name it
FDP = descriptor_pb2.FieldDescriptorProto

# Numbers of the descriptor.proto fields that make up SourceCodeInfo location paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
SERVICE_METHOD = 2

SCALARS: dict[int, Schema] = {
    FDP.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FDP.TYPE_FLOAT: {"type": "number", "format": "float"},
    FDP.TYPE_INT32: {"type": "integer", "format": "int32"},
    FDP.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FDP.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FDP.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FDP.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    # The transcoder writes 64-bit integers as JSON strings (JavaScript numbers would round them).
    FDP.TYPE_INT64: {"type": "string", "format": "int64"},
    FDP.TYPE_SINT64: {"type": "string", "format": "int64"},
    FDP.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FDP.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FDP.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FDP.TYPE_BOOL: {"type": "boolean"},
    FDP.TYPE_STRING: {"type": "string"},
    FDP.TYPE_BYTES: {"type": "string", "format": "byte"},
}

# Well-known types have their own JSON forms (the proto3 JSON mapping); they are inlined.
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double", "nullable": True},
    "google.protobuf.FloatValue": {"type": "number", "format": "float", "nullable": True},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32", "nullable": True},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "uint32", "minimum": 0, "nullable": True},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64", "nullable": True},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64", "nullable": True},
    "google.protobuf.BoolValue": {"type": "boolean", "nullable": True},
    "google.protobuf.StringValue": {"type": "string", "nullable": True},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte", "nullable": True},
}
ANY = "google.protobuf.Any"
ANY_SCHEMA: Schema = {
    "type": "object",
    "description": "A message of the type that `@type` names, with that type's fields beside `@type`.",
    "properties": {
        "@type": {
            "type": "string",
            "description": "`type.googleapis.com/` and the message's full name, e.g. "
            "`type.googleapis.com/google.rpc.ErrorInfo`.",
        }
    },
    "required": ["@type"],
    "additionalProperties": True,
}
STATUS = status_pb2.Status.DESCRIPTOR.full_name
# Rendered beside Status, so clients can read the details every error carries.
ERROR_DETAILS = [error_details_pb2.ErrorInfo.DESCRIPTOR.full_name, error_details_pb2.BadRequest.DESCRIPTOR.full_name]
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
ERROR_TITLES = {400: "Bad request", 401: "Unauthenticated", 403: "Permission denied", 404: "Not found"}
ERROR_TITLES |= {409: "Conflict", 429: "Too many requests", 503: "Unavailable", 504: "Timed out"}


class GenerationError(Exception):
    """The descriptors hold something this generator cannot render, or the inputs disagree."""


@dataclass(frozen=True)
class Located:
    """A message, enum or service descriptor with where its comments are."""

    full_name: str
    file: str
    path: LocationPath
    proto: Any  # DescriptorProto, EnumDescriptorProto or ServiceDescriptorProto


@dataclass
class Descriptors:
    """Every file the generated modules import, indexed by full name."""

    files: dict[str, descriptor_pb2.FileDescriptorProto] = field(default_factory=dict)
    messages: dict[str, Located] = field(default_factory=dict)
    enums: dict[str, Located] = field(default_factory=dict)
    services: list[Located] = field(default_factory=list)
    roots: set[str] = field(default_factory=set)  # files of the API itself (agenttasks.v1 modules)

    def add(self, fd: FileDescriptor, root: bool) -> None:
        if root:
            self.roots.add(fd.name)
        if fd.name in self.files:
            return
        for dep in fd.dependencies:
            self.add(dep, root=False)
        proto = descriptor_pb2.FileDescriptorProto.FromString(fd.serialized_pb)
        self.files[proto.name] = proto
        prefix = f"{proto.package}." if proto.package else ""
        for i, message in enumerate(proto.message_type):
            self._add_message(proto.name, prefix, message, (FILE_MESSAGE, i))
        for i, enum in enumerate(proto.enum_type):
            self.enums[prefix + enum.name] = Located(prefix + enum.name, proto.name, (FILE_ENUM, i), enum)
        for i, service in enumerate(proto.service):
            self.services.append(Located(prefix + service.name, proto.name, (FILE_SERVICE, i), service))

    def _add_message(self, file: str, prefix: str, message: descriptor_pb2.DescriptorProto, path: LocationPath) -> None:
        name = prefix + message.name
        self.messages[name] = Located(name, file, path, message)
        for i, nested in enumerate(message.nested_type):
            self._add_message(file, name + ".", nested, (*path, MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = Located(f"{name}.{enum.name}", file, (*path, MESSAGE_ENUM, i), enum)

    def message(self, type_name: str) -> Located:
        return self.messages[type_name.lstrip(".")]


def api_modules() -> list[ModuleType]:
    """The generated `agenttasks.v1.*_pb2` modules (not the *_pb2_grpc ones)."""
    names = sorted(m.name for m in pkgutil.iter_modules(agenttasks.v1.__path__) if m.name.endswith("_pb2"))
    return [importlib.import_module(f"{PACKAGE}.{name}") for name in names]


def load_descriptors() -> Descriptors:
    found = Descriptors()
    for module in api_modules():
        found.add(module.DESCRIPTOR, root=True)
    found.add(error_details_pb2.DESCRIPTOR, root=False)
    return found


def _stripped(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """`proto` as the Python plugin embeds it: without source info and json_name."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    copy.ClearField("source_code_info")

    def clear(messages: Any) -> None:
        for message in messages:
            for f in message.field:
                f.ClearField("json_name")
            clear(message.nested_type)

    clear(copy.message_type)
    return copy


class Comments:
    """Comments of the proto files, from protoc's SourceCodeInfo."""

    def __init__(self, sets: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._by_file: dict[str, dict[LocationPath, str]] = {}
        for name, proto in sets.items():
            located = self._by_file.setdefault(name, {})
            for location in proto.source_code_info.location:
                text = clean_comment(location.leading_comments or location.trailing_comments)
                if text:
                    located[tuple(location.path)] = text

    def get(self, file: str, path: LocationPath) -> str:
        return self._by_file.get(file, {}).get(path, "")


def clean_comment(raw: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in raw.rstrip().split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def load_comments(found: Descriptors, files: set[str]) -> Comments:
    """Compile `files` from proto/ with source info; each must equal the descriptor in use."""
    sources = sorted(f for f in files if (PROTO_ROOT / f).is_file())
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "descriptors.binpb"
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}"]
        cmd += ["--include_source_info", f"--descriptor_set_out={out}", *sources]
        subprocess.run(cmd, check=True, cwd=ROOT)
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    by_name = {proto.name: proto for proto in compiled.file}
    for name in sources:
        if _stripped(by_name[name]).SerializeToString() != found.files[name].SerializeToString():
            if name in found.roots:
                hint = "the generated modules drifted from proto/; run: python scripts/gen_proto.py"
            else:
                hint = "the vendored copy differs from the installed googleapis-common-protos module"
            raise GenerationError(f"proto/{name}: {hint}")
    return Comments(by_name)


def first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n", 1)[0].split())
    match = re.match(r"(.+?\.)\s+(?=[A-Z`])", paragraph)
    return match.group(1) if match else paragraph


def schema_name(full_name: str) -> str:
    """Component name: the message's name inside the API's package, the full name outside it."""
    return full_name.removeprefix(PACKAGE + ".")


def ref(full_name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{schema_name(full_name)}"}


BYTES_NOTE = "At most {} bytes of UTF-8; `maxLength` is the number of characters that never exceeds it."

RULE_KEYWORDS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "min_length": "minLength",
    "max_length": "maxLength",
    "pattern": "pattern",
    "format": "format",
    "min_items": "minItems",
    "max_items": "maxItems",
}


def constrained(schema: Schema, rule: Rule) -> Schema:
    """`schema` with the JSON Schema keywords that say `rule`."""
    out = dict(schema)
    for attribute, keyword in RULE_KEYWORDS.items():
        if (value := getattr(rule, attribute)) is not None:
            out[keyword] = value
    if rule.enum:
        out["enum"] = list(rule.enum)
    return out


def default_rules() -> dict[str, Rule]:
    """The field rules of a server with the default settings (what `agenttasks serve` runs)."""
    defaults = Settings.model_fields
    message_bytes, timeout = defaults["max_message_bytes"].default, defaults["max_timeout_seconds"].default
    return dict(field_rules(message_bytes, timeout))


def callback_choice() -> Schema:
    """Submit's one rule across fields: `webhook_url` is required with `webhook` and refused otherwise."""
    return {
        "anyOf": [
            {"properties": {"callback_mode": {"enum": [CallbackMode.POLL.value]}, "webhook_url": {"maxLength": 0}}},
            {
                "properties": {"callback_mode": {"enum": [CallbackMode.WEBHOOK.value]}},
                "required": ["callback_mode", "webhook_url"],
            },
        ]
    }


def nested_names(located: Located) -> set[str]:
    return {f.name for f in located.proto.field}


def behaviors(f: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(f.options.Extensions[field_behavior_pb2.field_behavior])


@dataclass(frozen=True)
class Binding:
    method: str
    path: str  # the proto template, e.g. /agent/{agent_id}
    body: str
    response_body: str


def bindings(rule: http_pb2.HttpRule) -> Iterator[Binding]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return
    if kind == "custom":
        raise GenerationError(f"custom HTTP method {rule.custom.kind!r} is not supported")
    yield Binding(kind, getattr(rule, kind), rule.body, rule.response_body)
    for extra in rule.additional_bindings:
        yield from bindings(extra)


PATH_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")


@dataclass(frozen=True)
class Made:
    """An operation rendered, with what the links between operations are made from."""

    full_method: str
    path: str
    operation: Schema
    binding: Binding
    method: descriptor_pb2.MethodDescriptorProto


class Generator:
    def __init__(self, found: Descriptors) -> None:
        self.found = found
        self.comments = Comments({})
        self.wanted: set[str] = set()  # messages and enums to render as components
        self.rules = default_rules()

    def comment(self, located: Located, *tail: int) -> str:
        return self.comments.get(located.file, (*located.path, *tail))

    def rule(self, owner: Located, field_name: str) -> Rule | None:
        """The field rule of `field_name` in `owner`, if `owner` is a request (answers have none)."""
        name = owner.proto.name
        if not name.endswith("Request"):
            return None
        if field_name == "status":  # a task status filter, or an agent status to set
            return self.rules["task_status" if name.startswith("ListTasks") else "agent_status"]
        if field_name == "agent_id" and name in TASK_NAMED_REQUESTS:
            return self.rules["task_agent_id"]
        return self.rules.get(field_name)

    # Schemas ------------------------------------------------------------------------------------

    def field_schema(self, owner: Located, index: int) -> Schema:
        """The schema of field `index` of `owner`, with its description and behaviours."""
        f = owner.proto.field[index]
        schema = self.value_schema(f)
        extra: Schema = {}
        if text := self.comment(owner, MESSAGE_FIELD, index):
            extra["description"] = text
        if (rule := self.rule(owner, f.name)) is not None:
            schema = constrained(schema, rule)
            if rule.max_bytes is not None:
                extra["description"] = f"{extra.get('description', '')}\n\n{BYTES_NOTE.format(rule.max_bytes)}".strip()
        if field_behavior_pb2.OUTPUT_ONLY in behaviors(f):
            extra["readOnly"] = True
        if not extra:
            return schema
        if "$ref" in schema:  # OpenAPI 3.0 ignores siblings of $ref
            return {"allOf": [schema], **extra}
        return {**schema, **extra}

    def value_schema(self, f: descriptor_pb2.FieldDescriptorProto) -> Schema:
        if f.type == FDP.TYPE_MESSAGE:
            entry = self.found.message(f.type_name).proto
            if entry.options.map_entry:
                return {"type": "object", "additionalProperties": self.single_schema(entry.field[1])}
        single = self.single_schema(f)
        if f.label == FDP.LABEL_REPEATED:
            return {"type": "array", "items": single}
        return single

    def single_schema(self, f: descriptor_pb2.FieldDescriptorProto) -> Schema:
        if f.type in SCALARS:
            return dict(SCALARS[f.type])
        name = f.type_name.lstrip(".")
        if f.type == FDP.TYPE_ENUM:
            self.wanted.add(name)
            return ref(name)
        if f.type != FDP.TYPE_MESSAGE:
            raise GenerationError(f"field {f.name}: unsupported type {f.type}")
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        self.wanted.add(name)
        return ref(name)

    def message_schema(self, located: Located, without: frozenset[str] = frozenset()) -> Schema:
        message: descriptor_pb2.DescriptorProto = located.proto
        properties: Schema = {}
        required: list[str] = []
        for i, f in enumerate(message.field):
            if f.name in without:
                continue
            properties[f.name] = self.field_schema(located, i)
            nested = self.found.message(f.type_name) if f.type == FDP.TYPE_MESSAGE else None
            if without and nested is not None and f.label == FDP.LABEL_REPEATED and without & nested_names(nested):
                # BatchSubmit's requests: the path sets their agent_id too, so they leave it out.
                properties[f.name] = {**properties[f.name], "items": self.message_schema(nested, without)}
                properties[f.name]["items"].pop("description", None)
            if field_behavior_pb2.REQUIRED in behaviors(f):
                required.append(f.name)
        schema: Schema = {"type": "object"}
        description = self.comment(located)
        oneofs = [
            [
                f.name
                for f in message.field
                if f.HasField("oneof_index") and f.oneof_index == i and not f.proto3_optional
            ]
            for i in range(len(message.oneof_decl))
        ]
        for names in filter(None, oneofs):
            members = ", ".join(f"`{n}`" for n in names if n not in without)
            description = f"{description}\n\nAt most one of {members} is set.".strip()
        if description:
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        if located.proto.name.endswith("Request"):
            schema["additionalProperties"] = False  # the server refuses unknown body fields (api/body_fields.py)
            if {"callback_mode", "webhook_url"} <= set(properties):
                schema |= callback_choice()
        return schema

    def enum_schema(self, located: Located) -> Schema:
        enum: descriptor_pb2.EnumDescriptorProto = located.proto
        schema: Schema = {"type": "string", "enum": [v.name for v in enum.value]}
        if description := self.comment(located):
            schema["description"] = description
        return schema

    def components(self) -> Schema:
        """Every wanted message and enum, and the ones they reach."""
        schemas: dict[str, Schema] = {}
        names: dict[str, str] = {}
        done: set[str] = set()
        while pending := sorted(self.wanted - done):
            for full_name in pending:
                done.add(full_name)
                if full_name == ANY:
                    schema = dict(ANY_SCHEMA)
                elif full_name in self.found.enums:
                    schema = self.enum_schema(self.found.enums[full_name])
                else:
                    schema = self.message_schema(self.found.messages[full_name])
                name = schema_name(full_name)
                if names.setdefault(name, full_name) != full_name:
                    raise GenerationError(f"{full_name} and {names[name]} would both be schema {name}")
                schemas[name] = schema
        return dict(sorted(schemas.items()))

    # Operations ---------------------------------------------------------------------------------

    def parameter(self, name: str, where: str, schema: Schema, required: bool, description: str) -> Schema:
        parameter: Schema = {"name": name, "in": where}
        if description:
            parameter["description"] = description
        if required:
            parameter["required"] = True
        parameter["schema"] = schema
        return parameter

    def query_parameters(self, located: Located, bound: set[str], prefix: str = "", depth: int = 0) -> list[Schema]:
        """Fields bound neither by the path nor the body: query parameters, nested ones dotted."""
        parameters = []
        for i, f in enumerate(located.proto.field):
            name = prefix + f.name
            if name in bound:
                continue
            description = self.comment(located, MESSAGE_FIELD, i)
            type_name = f.type_name.lstrip(".")
            if f.type == FDP.TYPE_MESSAGE and type_name not in WELL_KNOWN:
                nested = self.found.message(type_name)
                if f.label == FDP.LABEL_REPEATED or nested.proto.options.map_entry or depth > 4:
                    raise GenerationError(f"{located.full_name}.{f.name} cannot be a query parameter")
                parameters += self.query_parameters(nested, bound, name + ".", depth + 1)
                continue
            if type_name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
                raise GenerationError(f"{located.full_name}.{f.name} (JSON) cannot be a query parameter")
            schema = self.value_schema(f)
            if (rule := self.rule(located, f.name)) is not None:
                schema = constrained(schema, rule)
            required = field_behavior_pb2.REQUIRED in behaviors(f)
            parameters.append(self.parameter(name, "query", schema, required, description))
        return parameters

    def operation(self, service: Located, index: int, binding: Binding, operation_id: str) -> Schema:
        method: descriptor_pb2.MethodDescriptorProto = service.proto.method[index]
        full_method = f"{service.full_name}.{method.name}"
        if method.client_streaming:
            raise GenerationError(f"{full_method}: client streaming over REST is not supported")
        request = self.found.message(method.input_type)
        by_name = {f.name: i for i, f in enumerate(request.proto.field)}
        path_fields = PATH_VARIABLE.findall(binding.path)
        parameters = []
        for name in path_fields:
            if name not in by_name:
                raise GenerationError(f"{full_method}: path variable {name} is not a field of {request.full_name}")
            i = by_name[name]
            schema = self.value_schema(request.proto.field[i])
            if (rule := self.rule(request, name)) is not None:
                schema = constrained(schema, rule)
            description = self.comment(request, MESSAGE_FIELD, i)
            parameters.append(self.parameter(name, "path", schema, True, description))

        operation: Schema = {"operationId": operation_id, "tags": [service.proto.name]}
        text = self.comment(service, SERVICE_METHOD, index)
        grpc_note = f"gRPC: `/{service.full_name}/{method.name}`."
        operation["summary"] = first_sentence(text) if text else method.name
        operation["description"] = f"{text}\n\n{grpc_note}" if text else grpc_note

        body_fields = self.body_fields(binding, by_name, path_fields, full_method)
        parameters += self.query_parameters(request, set(path_fields) | body_fields)
        if parameters:
            operation["parameters"] = parameters
        if binding.body == "*":
            if not path_fields:
                self.wanted.add(request.full_name)
                schema = ref(request.full_name)
            elif body_fields:
                # The request message less its path fields (which the path sets), inline.
                schema = self.message_schema(request, without=frozenset(path_fields))
                schema.pop("description", None)
            else:
                schema = {"type": "object", "description": "No fields: send `{}`.", "additionalProperties": False}
            required = [f for f in request.proto.field if f.name in body_fields]
            operation["requestBody"] = {
                "required": any(field_behavior_pb2.REQUIRED in behaviors(f) for f in required),
                "content": {"application/json": {"schema": schema}},
            }
        elif binding.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.field_schema(request, by_name[binding.body])}},
            }
        operation["responses"] = {
            **self.success(full_method, method, binding),
            **self.errors(path_fields, by_name),
        }
        return operation

    @staticmethod
    def body_fields(binding: Binding, fields: dict[str, int], path_fields: list[str], full_method: str) -> set[str]:
        """The request fields the JSON body carries: all but the path's for "*", or the one named."""
        if binding.body == "*":
            return set(fields) - set(path_fields)
        if binding.body and binding.body not in fields:
            raise GenerationError(f"{full_method}: body {binding.body} is not a request field")
        return {binding.body} if binding.body else set()

    def success(self, full_method: str, method: descriptor_pb2.MethodDescriptorProto, binding: Binding) -> Schema:
        response = self.found.message(method.output_type)
        if binding.response_body:
            fields = {f.name: i for i, f in enumerate(response.proto.field)}
            if binding.response_body not in fields:
                raise GenerationError(f"{full_method}: response_body {binding.response_body} is not a field")
            schema = self.value_schema(response.proto.field[fields[binding.response_body]])
        else:
            schema = ref(response.full_name)
            self.wanted.add(response.full_name)
        status = SUCCESS_STATUS.get(full_method, "200")
        if not method.server_streaming:
            return {status: {"description": "Success.", "content": {"application/json": {"schema": schema}}}}
        self.wanted.add(response.full_name)
        message_ref = ref(response.full_name)["$ref"]
        description = (
            f"Server-sent events: each message of the stream is one `data: <JSON>` line and a blank line, the "
            f"JSON being a `{schema_name(response.full_name)}` ({message_ref}). Events are sent as they happen; "
            f"the response ends with the stream."
        )
        # OpenAPI 3.0 has `schema` describe each event of a text/event-stream (3.2's itemSchema): an
        # object whose `data` is the JSON text; x-sse-data-schema names the schema of that JSON.
        event = {
            "type": "object",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
            "required": ["data"],
        }
        media = {"schema": event, "x-sse-data-schema": {"$ref": message_ref}}
        return {status: {"description": description, "content": {"text/event-stream": media}}}

    def errors(self, path_fields: list[str], request_fields: dict[str, int]) -> Schema:
        statuses = [400, 401, 403]
        if path_fields:  # only a named resource can be missing
            statuses.append(404)
        if IDEMPOTENCY_FIELD in request_fields:
            statuses.append(409)
        statuses.append(429)  # every call counts against its credential's rate
        statuses.append(503)  # a draining server refuses every call
        statuses.append(504)  # every call has the server's deadline
        responses = {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}
        responses["default"] = {"$ref": "#/components/responses/Error"}
        return responses

    # Document -----------------------------------------------------------------------------------

    def generate(self) -> Schema:
        http_services = [s for s in self.found.services if s.file in self.found.roots and self._has_http(s)]
        files = {s.file for s in http_services}
        # Collect schemas first (to know which files need comments), then render with comments.
        self.paths(http_services)
        self.wanted |= {STATUS, *ERROR_DETAILS}
        self.components()
        files |= {self._file_of(name) for name in self.wanted}
        self.comments = load_comments(self.found, files)
        self.wanted = {STATUS, *ERROR_DETAILS}
        paths = self.paths(http_services)
        defaults = Settings.model_fields
        server = f"http://{defaults['http_host'].default}:{defaults['http_port'].default}"
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "agenttasks REST API",
                "version": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"],
                "description": self.info_description(paths),
                "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            },
            "servers": [{"url": server, "description": "`agenttasks serve` with its default settings"}],
            "security": [{"bearerAuth": []}, {"apiKey": []}],
            "tags": [
                {"name": s.proto.name, "description": self.comment(s) or s.full_name}
                for s in sorted(http_services, key=lambda s: s.proto.name)
            ],
            "paths": paths,
            "components": {
                "schemas": self.components(),
                "responses": self.error_responses(),
                "securitySchemes": SECURITY_SCHEMES,
            },
        }

    @staticmethod
    def info_description(paths: Schema) -> str:
        # Said only while true: every binding has its /v1 twin.
        unversioned = [p for p in paths if not p.startswith("/v1/")]
        twins = all("/v1" + p in paths for p in unversioned)
        return INFO_DESCRIPTION.replace("{versions}\n", "Every path also answers under `/v1`.\n" if twins else "")

    def _file_of(self, full_name: str) -> str:
        located = self.found.enums.get(full_name) or self.found.messages[full_name]
        return located.file

    @staticmethod
    def _has_http(service: Located) -> bool:
        return any(m.options.HasExtension(annotations_pb2.http) for m in service.proto.method)

    def paths(self, services: list[Located]) -> Schema:
        paths: dict[str, Schema] = {}
        made: list[Made] = []
        for service in services:
            for index, method in enumerate(service.proto.method):
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for n, binding in enumerate(bindings(rule)):
                    operation_id = f"{service.proto.name}_{method.name}" + (f"_{n + 1}" if n else "")
                    path = PATH_VARIABLE.sub(lambda m: "{" + m.group(1) + "}", binding.path)
                    item = paths.setdefault(path, {})
                    if binding.method in item:
                        raise GenerationError(f"{binding.method.upper()} {path} is bound twice")
                    item[binding.method] = self.operation(service, index, binding, operation_id)
                    made.append(Made(f"{service.full_name}.{method.name}", path, item[binding.method], binding, method))
        self.add_links(made)
        return {
            path: dict(sorted(item.items(), key=lambda kv: HTTP_METHODS.index(kv[0]))) for path, item in paths.items()
        }

    def add_links(self, made: list[Made]) -> None:
        """Links from the answers of LINK_SOURCES to every operation whose path their fields fill
        (under the same prefix), e.g. CreateAgent -> Submit -> GetStatus. Streams are left out:
        a watch of a live task stays open until the task ends."""
        for source in made:
            if source.full_method not in LINK_SOURCES:
                continue
            answer = self.found.message(source.method.output_type)
            if source.binding.response_body:
                inner = next(f for f in answer.proto.field if f.name == source.binding.response_body)
                answer = self.found.message(inner.type_name)
            fields = nested_names(answer)
            links: Schema = {}
            for target in made:
                variables = PATH_VARIABLE.findall(target.path)
                if (
                    target is source
                    or target.method.server_streaming
                    or not variables
                    or not set(variables) <= fields
                    or target.path.startswith("/v1/") != source.path.startswith("/v1/")
                ):
                    continue
                links[target.operation["operationId"]] = {
                    "operationId": target.operation["operationId"],
                    "parameters": {v: f"$response.body#/{v}" for v in variables},
                }
            status = next(code for code in source.operation["responses"] if code.startswith("2"))
            source.operation["responses"][status]["links"] = links

    def error_responses(self) -> Schema:
        reasons: dict[int, list[str]] = {}
        for error, mapping in ERROR_TABLE.items():
            # The docstring's first sentence, whatever lines it spans.
            why = " ".join((error.__doc__ or "").split()).split(". ")[0].rstrip(".") + "."
            reasons.setdefault(mapping.http_status, []).append(f"- `{mapping.reason}`: {why}")
        content = {"application/json": {"schema": ref(STATUS)}}
        responses: Schema = {}
        for status in sorted(ERROR_TITLES):
            lines = "\n".join(reasons.get(status, []))
            description = (
                f"{ERROR_TITLES[status]}. `details` holds a `google.rpc.ErrorInfo` whose `reason` is one of:\n\n{lines}"
            )
            if status == ERROR_TABLE[InvalidArgument].http_status:
                whys = ", ".join(f"`{why.value}`" for why in Why)
                description += (
                    "\n\n`INVALID_ARGUMENT` also has a `google.rpc.BadRequest` naming each bad field, with a stable "
                    f"`reason` per field, one of: {whys}."
                )
            retried = [
                m.reason for e, m in ERROR_TABLE.items() if issubclass(e, RetryLater) and m.http_status == status
            ]
            if retried:
                description += (
                    f"\n\nWith {' and '.join(f'`{r}`' for r in retried)}, a `google.rpc.RetryInfo` detail and the "
                    "`Retry-After` header say when to call again."
                )
            responses[f"Error{status}"] = {"description": description, "content": content}
        responses["Error"] = {
            "description": f"Any other error, e.g. {INTERNAL.http_status} with reason `{INTERNAL.reason}` (a bug; "
            "logged by the server).",
            "content": content,
        }
        return responses


INFO_DESCRIPTION = """\
The REST face of agenttasks: Envoy's gRPC-JSON transcoder serves these paths from the
`google.api.http` annotations in `proto/agenttasks/v1/`, calling the same gRPC services.
{versions}

JSON: field names are the proto's (snake_case); unset fields may be left out; 64-bit integers
are strings; times are RFC 3339 (UTC); `metadata`, `data` and `details` are free-form objects.
Errors are `google.rpc.Status` JSON with an `ErrorInfo` detail whose `reason` is stable.

The schemas state what the server accepts (ranges, lengths, patterns, enums): a request they
allow is not refused for its shape. Limits are those of a server with the default settings; an
operator may change the message size (`AGENTTASKS_MAX_MESSAGE_BYTES`) and the longest timeout
(`AGENTTASKS_MAX_TIMEOUT_SECONDS`).

Generated by `scripts/gen_openapi.py` from the API's descriptors; do not edit by hand."""

SECURITY_SCHEMES: Schema = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT or API key",
        "description": "`Authorization: Bearer <token>` with a JWT or an API key.",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key."},
}


def render() -> str:
    document = Generator(load_descriptors()).generate()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/openapi.json differs from the protos")
    args = parser.parse_args()
    try:
        fresh = render()
    except GenerationError as error:
        print(f"gen_openapi: {error}", file=sys.stderr)
        return 1
    if not args.check:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(fresh)
        print(OUT.relative_to(ROOT))
        return 0
    committed = OUT.read_text() if OUT.exists() else ""
    if committed != fresh:
        print("docs/openapi.json drifted from the protos; run: python scripts/gen_openapi.py", file=sys.stderr)
        diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), "committed", "generated", lineterm="")
        for line in list(diff)[:60]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("docs/openapi.json matches the protos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
