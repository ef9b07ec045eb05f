"""The runtime Envoy config: envoy.yaml with this run's addresses, descriptor and Lua code.

envoy.yaml lives in this package so `pip install .` ships it; the repository root links to it,
so the file a person reads and validates is the file the service runs. By itself it serves
127.0.0.1:8080 in front of 127.0.0.1:50051 with paths relative to the repository root. `render`
changes only what differs at run time (listener, upstream, admin, descriptor path) and inlines
the Lua sources, so the result depends on nothing but the descriptor file. Envoy reads the JSON
that `write_config` produces directly.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

LISTENER = "rest"
CLUSTER = "agenttasks"
LUA = "envoy.filters.http.lua"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


class GatewayError(Exception):
    """The REST gateway cannot start or stopped; the message is one clear line."""


def template_text(name: str = "envoy.yaml") -> str:
    """A file shipped beside this module (envoy.yaml, rest.lua)."""
    return resources.files("agenttasks.gateway").joinpath(name).read_text(encoding="utf-8")


def load_template() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(template_text()))


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise GatewayError(f"envoy.yaml has no {what} named {name!r}")


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def ip_for(host: str, port: int, *, connect: bool) -> str:
    """An IP literal for `host`, which Envoy needs where it has no resolver configured.

    With `connect`, a wildcard (0.0.0.0, ::) becomes the loopback address of its family: a server
    bound to every interface is reached on loopback. Names are resolved once, now.
    """
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        try:
            infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise GatewayError(f"cannot resolve {host!r}: {error}") from None
        address = ipaddress.ip_address(infos[0][4][0])
    if connect and address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def _inlined(source: dict[str, str]) -> dict[str, str]:
    return {"inline_string": template_text(Path(source["filename"]).name)}


def render(
    *,
    listen: tuple[str, int],
    upstream: tuple[str, int],
    descriptor: Path,
    admin: tuple[str, int] = ("127.0.0.1", 0),
) -> dict[str, Any]:
    """envoy.yaml as a dict, pointed at these addresses and this descriptor file."""
    config = load_template()
    config["admin"]["address"] = _socket_address(*admin)
    static = config["static_resources"]

    listener = _named(static["listeners"], LISTENER, "listener")
    listener["address"] = _socket_address(ip_for(listen[0], listen[1], connect=False), listen[1])

    cluster = _named(static["clusters"], CLUSTER, "cluster")
    upstream_address = _socket_address(ip_for(upstream[0], upstream[1], connect=True), upstream[1])
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": upstream_address}}]}]

    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = manager["http_filters"]
    _named(filters, TRANSCODER, "http filter")["typed_config"]["proto_descriptor"] = str(descriptor)
    lua = _named(filters, LUA, "http filter")["typed_config"]
    # envoy.yaml names the Lua files by their repository path (gateway/x.lua, a link to the
    # copy in this package); inlined, the runtime config needs no working directory.
    lua["source_codes"] = {name: _inlined(source) for name, source in lua["source_codes"].items()}
    lua["default_source_code"] = _inlined(lua["default_source_code"])
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path
