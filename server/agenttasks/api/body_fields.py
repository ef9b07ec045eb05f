"""Unknown fields in a REST body are refused, as unknown query parameters are.

Envoy's transcoder drops JSON body fields that the request message does not have without a
word, so `{"priorty": 9}` would queue a task at priority 5. The gateway (gateway/rest.lua) sends
the names a body set in the `x-agenttasks-body-fields` header: the top-level keys, and the keys
of the objects in a top-level array as `requests[3].priorty`, each percent-encoded. Here they are
checked against the request message of the method called, in both spellings the transcoder
takes (`request_id`, `requestId`). gRPC clients never send the header: protobuf's own rule, that
unknown fields are skipped, stays theirs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from agenttasks.core.errors import FieldViolation, InvalidArgument, Why

BODY_FIELDS_HEADER = "x-agenttasks-body-fields"
_NESTED = re.compile(r"^([^\[\].]+)\[(\d+)\]\.([^\[\].]+)$")
_PATH_VARIABLE = re.compile(r"\{(\w+)")


@dataclass(frozen=True, slots=True)
class _Fields:
    """The names a JSON body may set for one message, and the message of each repeated one."""

    names: frozenset[str]
    shown: str
    repeated: dict[str, Descriptor]
    bound: frozenset[str]
    from_path: frozenset[str]
    """Both spellings of the fields the path binds: the transcoder lets `agentId` through."""


def _path_variables(method: MethodDescriptor) -> set[str]:
    """Fields the method's REST paths bind: they come from the path, never the body."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    found: set[str] = set()
    for binding in [rule, *rule.additional_bindings]:
        template = getattr(binding, binding.WhichOneof("pattern") or "get")
        found.update(_PATH_VARIABLE.findall(template))
    return found


@functools.cache
def _fields(message: Descriptor, bound: frozenset[str] = frozenset()) -> _Fields:
    fields = message.fields
    names = frozenset(f.name for f in fields) | frozenset(f.json_name for f in fields)
    repeated = {
        spelling: f.message_type
        for f in fields
        if f.is_repeated and f.message_type is not None
        for spelling in (f.name, f.json_name)
    }
    shown = ", ".join(f.name for f in fields if f.name not in bound) or "no fields"
    from_path = frozenset(s for f in fields if f.name in bound for s in (f.name, f.json_name))
    return _Fields(names, shown, repeated, bound, from_path)


@functools.cache
def _method_fields(method: str) -> _Fields | None:
    """The body fields of `method` ("/package.Service/Method"), or None if it is not ours."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return None
    return _fields(found.input_type, frozenset(_path_variables(found)))


def check_body_fields(method: str, header: str) -> None:
    """Raise InvalidArgument naming every body field of `header` that `method` does not take."""
    fields = _method_fields(method)
    if fields is None:
        return
    violations: list[FieldViolation] = []
    for sent in header.split(","):
        if not sent:
            continue
        nested = _NESTED.match(sent)
        if nested is None:
            name = unquote(sent)
            if name in fields.from_path:
                violations.append(FieldViolation(name, "comes from the path; the body may not set it", Why.SET_BY_PATH))
            elif name not in fields.names:
                violations.append(
                    FieldViolation(name, f"unknown field; the body takes {fields.shown}", Why.UNKNOWN_FIELD)
                )
            continue
        outer, index, inner = nested.groups()
        element = fields.repeated.get(unquote(outer))
        if element is None:
            continue  # not a list of messages: the transcoder has checked its type
        inner_fields = _fields(element, fields.bound)  # a BatchSubmit's agent_id is the path's too
        if unquote(inner) not in inner_fields.names:
            violations.append(
                FieldViolation(
                    f"{unquote(outer)}[{index}].{unquote(inner)}",
                    f"unknown field; each of {unquote(outer)} takes {inner_fields.shown}",
                    Why.UNKNOWN_FIELD,
                )
            )
    if violations:
        raise InvalidArgument(violations)
