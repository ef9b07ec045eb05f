"""The gateway's own list of REST routes (rest.lua answers 405 from it) is the protos' list."""

from __future__ import annotations

import re
from pathlib import Path

from google.api import annotations_pb2

from agenttasks.v1 import agent_service_pb2, task_service_pb2, webhook_service_pb2, worker_service_pb2


def test_the_gateways_route_list_is_the_protos_http_annotations() -> None:
    """rest.lua answers 405 from its own list of paths and methods: it must be the annotations'."""
    lua = (Path(__file__).resolve().parents[2] / "server/agenttasks/gateway/rest.lua").read_text()
    listed = set(re.findall(r'^  \{ "(GET|POST)", "([^"]+)" \},$', lua, flags=re.MULTILINE))
    listed |= {(method, "/v1" + path) for method, path in listed}
    annotated = set()
    for module in (task_service_pb2, agent_service_pb2, worker_service_pb2, webhook_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for rpc in service.methods:
                options = rpc.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    rule = options.Extensions[annotations_pb2.http]
                    for binding in [rule, *rule.additional_bindings]:
                        kind = binding.WhichOneof("pattern")
                        annotated.add((kind.upper(), getattr(binding, kind)))
    assert listed == annotated, (listed - annotated, annotated - listed)
