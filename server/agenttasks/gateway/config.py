"""The runtime Envoy config: envoy.yaml with this run's addresses, descriptor and Lua code.

envoy.yaml lives in this package so `pip install .` ships it; the repository root links to it,
so the file a person reads and validates is the file the service runs. By itself it serves REST
on 127.0.0.1:8080 and native gRPC on 127.0.0.1:50050 in front of 127.0.0.1:50051, with paths
relative to the repository root. `render` changes only what differs at run time (listeners,
upstreams, admin, descriptor path; the gRPC front is dropped when not asked for, as serve does)
and inlines the Lua sources, so the result depends on nothing but the descriptor file. Envoy
reads the JSON that `write_config` produces directly.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

LISTENER = "rest"
GRPC_LISTENER = "grpc"
STATS_LISTENER = "stats"
CLUSTER = "agenttasks"
ADMIN_CLUSTER = "envoy_admin"
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


def parse_upstreams(text: str) -> list[tuple[str, int]]:
    """`HOST:PORT[,HOST:PORT...]` (an IPv6 host in brackets) as (host, port) pairs, in order.

    Only the form is checked here; `resolve_upstreams` finds the addresses.
    """
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise GatewayError("no upstream given: name the gRPC replicas as HOST:PORT[,HOST:PORT...]")
    upstreams: list[tuple[str, int]] = []
    for entry in entries:
        if not entry:
            raise GatewayError(f"bad upstream list {text!r}: an empty entry between commas")
        host, colon, port = entry.rpartition(":")
        if not colon or not host or not port:
            raise GatewayError(f"bad upstream {entry!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise GatewayError(f"bad upstream {entry!r}: write an IPv6 address in brackets, e.g. [::1]:50051")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise GatewayError(f"bad upstream {entry!r}: the port must be a number from 1 to 65535")
        upstreams.append((host, int(port)))
    return upstreams


def resolve_upstreams(upstreams: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The replicas as IP literals, as the STATIC cluster needs them; names are resolved once,
    now. Refuses an empty list and a replica named twice (round robin would favour it)."""
    if not upstreams:
        raise GatewayError("no upstream given: name the gRPC replicas as HOST:PORT[,HOST:PORT...]")
    resolved: dict[tuple[str, int], str] = {}
    for host, port in upstreams:
        named = f"{host}:{port}"
        try:
            address = (ip_for(host, port, connect=True), port)
        except GatewayError as error:
            raise GatewayError(f"upstream {named}: {error}") from None
        if address in resolved:
            same = f"{address[0]}:{port}" if ":" not in address[0] else f"[{address[0]}]:{port}"
            raise GatewayError(f"upstreams {resolved[address]} and {named} are the same replica ({same})")
        resolved[address] = named
    return list(resolved)


def _inlined(source: dict[str, str]) -> dict[str, str]:
    return {"inline_string": template_text(Path(source["filename"]).name)}


def _drop_retries(listeners: list[dict[str, Any]]) -> None:
    for found in listeners:
        for host in found["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]:
            host.pop("retry_policy", None)
            for route in host["routes"]:
                route.get("route", {}).pop("retry_policy", None)


# Envoy's access log entry: one JSON object per call on stdout, which the launcher reads and
# logs again as `envoy.access` in the service's own log form (observe/logs.py). Headers are
# named one by one: no Authorization, no x-api-key. `method` and `path` are what the client
# sent (the transcoder keeps them in x-envoy-original-*), `rpc` the gRPC method it became.
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "rpc": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "duration_ms": "%DURATION%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "upstream": "%UPSTREAM_HOST%",
    "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "flags": "%RESPONSE_FLAGS%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        }
    ]


def render(
    *,
    listen: tuple[str, int],
    upstreams: Sequence[tuple[str, int]],
    descriptor: Path,
    admin: tuple[str, int] = ("127.0.0.1", 0),
    grpc_front: tuple[str, int] | None = None,
    access_log: bool = False,
    stats: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """envoy.yaml as a dict: REST on `listen`, native gRPC on `grpc_front` and Envoy's
    /stats/prometheus on `stats` (None: no such listener), round robin over `upstreams`, and
    this descriptor file. With `access_log`, every listener writes a JSON line per call on
    stdout (ACCESS_LOG_FORMAT). With `stats`, the admin port must be known (not 0): the stats
    listener forwards to it."""
    config = load_template()
    config["admin"]["address"] = _socket_address(*admin)
    static = config["static_resources"]

    stats_listener = _named(static["listeners"], STATS_LISTENER, "listener")
    admin_cluster = _named(static["clusters"], ADMIN_CLUSTER, "cluster")
    if stats is None:
        static["listeners"].remove(stats_listener)
        static["clusters"].remove(admin_cluster)
    else:
        if admin[1] == 0:
            raise ValueError("the stats listener needs the admin port chosen beforehand, not 0")
        stats_listener["address"] = _socket_address(ip_for(stats[0], stats[1], connect=False), stats[1])
        endpoint = {"endpoint": {"address": _socket_address(ip_for(admin[0], admin[1], connect=True), admin[1])}}
        admin_cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [endpoint]}]

    listener = _named(static["listeners"], LISTENER, "listener")
    listener["address"] = _socket_address(ip_for(listen[0], listen[1], connect=False), listen[1])
    front = _named(static["listeners"], GRPC_LISTENER, "listener")
    if grpc_front is None:
        static["listeners"].remove(front)
    else:
        front["address"] = _socket_address(ip_for(grpc_front[0], grpc_front[1], connect=False), grpc_front[1])

    cluster = _named(static["clusters"], CLUSTER, "cluster")
    endpoints = [{"endpoint": {"address": _socket_address(*address)}} for address in resolve_upstreams(upstreams)]
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": endpoints}]
    if len(endpoints) == 1:
        # With one server (serve's own, or a gateway given one replica) there is no other to
        # send a call to: sent again, it would only get the same answer (SHUTTING_DOWN,
        # AGENT_UNAVAILABLE) later, or meet the same closed port.
        _drop_retries(static["listeners"])

    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = manager["http_filters"]
    _named(filters, TRANSCODER, "http filter")["typed_config"]["proto_descriptor"] = str(descriptor)
    lua = _named(filters, LUA, "http filter")["typed_config"]
    # envoy.yaml names the Lua files by their repository path (gateway/x.lua, a link to the
    # copy in this package); inlined, the runtime config needs no working directory.
    lua["source_codes"] = {name: _inlined(source) for name, source in lua["source_codes"].items()}
    lua["default_source_code"] = _inlined(lua["default_source_code"])
    if access_log:
        for each in static["listeners"]:
            each["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = _access_log()
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path
