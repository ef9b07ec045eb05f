"""envoy.yaml, the descriptor and the rendered runtime config: valid for Envoy, in step with the
protos, and shipped with the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor_pool

from agenttasks.gateway import GatewayError, envoy_binary, parse_upstreams, resolve_upstreams
from agenttasks.gateway.config import LUA, ip_for, load_template, render, template_text, write_config
from agenttasks.gateway.descriptor import SERVICES, descriptor_set, response_bodies
from agenttasks.v1 import webhook_service_pb2, worker_service_pb2

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "server" / "agenttasks" / "gateway"


def validate(config: Path, cwd: Path) -> None:
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


EVERY_SERVICE = (
    *SERVICES,
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
)
"""What the native gRPC front passes on: every service, not only those REST reaches."""
# What a call that changes something is sent again on: only failures that did no work.
WRITE_RETRIES = {"unavailable", "connect-failure", "refused-stream", "reset-before-request"}


def manager(config: dict[str, Any], listener: str = "rest") -> dict[str, Any]:
    """The HTTP connection manager of a listener."""
    for found in config["static_resources"]["listeners"]:
        if found["name"] == listener:
            typed: dict[str, Any] = found["filter_chains"][0]["filters"][0]["typed_config"]
            return typed
    raise AssertionError(f"no listener {listener!r}")


def routes(config: dict[str, Any], listener: str = "rest") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = manager(config, listener)["route_config"]["virtual_hosts"][0]["routes"]
    return found


def retry_on(config: dict[str, Any], route: dict[str, Any], listener: str = "rest") -> set[str]:
    """What the route's call is sent to another replica on (its own policy, else its host's)."""
    host = manager(config, listener)["route_config"]["virtual_hosts"][0]
    policy = route["route"].get("retry_policy", host.get("retry_policy"))
    return set(policy["retry_on"].split(",")) if policy else set()


def is_read(method_name: str) -> bool:
    return method_name.startswith(("Get", "List", "Watch"))


def route_for_grpc_path(config: dict[str, Any], path: str, listener: str = "rest") -> dict[str, Any]:
    """The route Envoy picks for a transcoded call (its gRPC path, no query string)."""
    for route in routes(config, listener):
        match = route["match"]
        if "headers" in match:  # the query-string guards never match a path without a query
            continue
        if (
            match.get("path") == path
            or ("prefix" in match and path.startswith(match["prefix"]))
            or ("safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path))
        ):
            return route
    raise AssertionError(f"no route for {path}")


def test_the_root_files_are_the_packaged_ones() -> None:
    # The package must carry envoy.yaml and the Lua for `pip install .`; the root names link to
    # them, and this keeps it so if a link is ever replaced by a copy.
    assert (ROOT / "envoy.yaml").read_bytes() == (PACKAGE_DIR / "envoy.yaml").read_bytes()
    assert (ROOT / "gateway" / "rest.lua").read_bytes() == (PACKAGE_DIR / "rest.lua").read_bytes()
    assert template_text("envoy.yaml") == (ROOT / "envoy.yaml").read_text()


def test_the_root_envoy_yaml_passes_envoy_validate() -> None:
    """What a person (and CI) does: build the descriptor with the project's script, validate."""
    built = subprocess.run(
        [sys.executable, "gateway/build_descriptor.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    assert Path(built.stdout.strip()) == ROOT / "gateway" / "agenttasks.binpb"
    validate(ROOT / "envoy.yaml", cwd=ROOT)


def test_the_rendered_runtime_config_passes_envoy_validate(tmp_path: Path) -> None:
    descriptor = tmp_path / "d.binpb"
    descriptor.write_bytes(descriptor_set().SerializeToString())
    everywhere = "0.0.0.0"  # noqa: S104 - a server bound to every interface, reached on loopback
    config = render(listen=("127.0.0.1", 0), upstreams=[(everywhere, 50051)], descriptor=descriptor)
    assert [found["name"] for found in config["static_resources"]["listeners"]] == ["rest"]  # serve: no gRPC front
    # One server: no other to send a call to again.
    assert all(not retry_on(config, route) for route in routes(config) if "route" in route)
    listener = config["static_resources"]["listeners"][0]
    cluster = config["static_resources"]["clusters"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50051}
    lua = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert lua["name"] == LUA
    assert lua["typed_config"]["source_codes"]["rest"] == {"inline_string": template_text("rest.lua")}
    # No path in it depends on the working directory: validate from elsewhere.
    validate(write_config(config, tmp_path / "envoy.json"), cwd=tmp_path)


def test_every_method_is_routed_as_its_annotations_ask() -> None:
    config = load_template()
    bodies = response_bodies()
    assert set(bodies.values()) == {"task", "agent"}
    for service in SERVICES:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            route = route_for_grpc_path(config, path)
            lua = route.get("typed_per_filter_config", {}).get(LUA)
            context = lua["filter_context"] if lua else {}
            expected: dict[str, str] = {}
            if method.name in ("Submit", "BatchSubmit"):  # queued work: 202 Accepted
                expected["status"] = "202"
            if path in bodies:
                expected["response_body"] = bodies[path]
            assert context == expected, path
            if method.server_streaming:
                assert (route["route"]["timeout"], route["route"]["idle_timeout"]) == ("0s", "0s"), path


def test_the_gateway_config_has_every_replica_and_the_grpc_front_and_passes_envoy_validate(tmp_path: Path) -> None:
    """What `agenttasks gateway` runs: several upstreams, in order, as IP literals, and the
    native gRPC listener."""
    descriptor = tmp_path / "d.binpb"
    descriptor.write_bytes(descriptor_set().SerializeToString())
    everywhere = "0.0.0.0"  # noqa: S104 - a replica bound to every interface, reached on loopback
    config = render(
        listen=("127.0.0.1", 0),
        upstreams=[("127.0.0.2", 50051), (everywhere, 50052), ("[::1]", 50053)],
        descriptor=descriptor,
        grpc_front=("127.0.0.1", 0),
    )
    static = config["static_resources"]
    assert [found["name"] for found in static["listeners"]] == ["rest", "grpc"]
    assert static["listeners"][1]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    (cluster,) = static["clusters"]
    (group,) = cluster["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]] == [
        {"address": "127.0.0.2", "port_value": 50051},
        {"address": "127.0.0.1", "port_value": 50052},
        {"address": "::1", "port_value": 50053},
    ]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check
    for listener in ("rest", "grpc"):
        assert all(retry_on(config, route, listener) for route in routes(config, listener) if "route" in route)
    validate(write_config(config, tmp_path / "envoy.json"), cwd=tmp_path)


def test_the_grpc_front_passes_every_method_on_as_is_with_no_timeout_of_its_own() -> None:
    config = load_template()
    filters = [found["name"] for found in manager(config, "grpc")["http_filters"]]
    assert filters == ["envoy.filters.http.router"]  # no transcoding, no Lua: gRPC as it came
    for service in EVERY_SERVICE:
        for method in service.methods:
            route = route_for_grpc_path(config, f"/{service.full_name}/{method.name}", "grpc")
            assert route["match"]["grpc"] == {}, method.full_name
            action = route["route"]
            # Streams live as long as they must; a unary call as long as its client's deadline.
            assert (action["timeout"], action["idle_timeout"]) == ("0s", "0s"), method.full_name
            assert action["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}, method.full_name


@pytest.mark.parametrize("listener", ["rest", "grpc"])
def test_only_reads_are_sent_again_after_a_replica_may_have_started_them(listener: str) -> None:
    """A write (Submit, Cancel, CreateAgent, ...) goes to another replica only when the first
    did no work: refused, never connected, or UNAVAILABLE (SHUTTING_DOWN). A reset or a
    CANCELLED may come after it committed, so only reads are sent again on those."""
    config = load_template()
    for service in SERVICES if listener == "rest" else EVERY_SERVICE:
        for method in service.methods:
            route = route_for_grpc_path(config, f"/{service.full_name}/{method.name}", listener)
            conditions = retry_on(config, route, listener)
            if is_read(method.name):
                assert {"reset", "cancelled"} | WRITE_RETRIES - {"reset-before-request"} <= conditions, method.name
            else:
                assert conditions == WRITE_RETRIES, method.name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", [("127.0.0.1", 50051)]),
        (" 10.0.0.1:1 , replica-b:2,[::1]:3 ", [("10.0.0.1", 1), ("replica-b", 2), ("[::1]", 3)]),
    ],
)
def test_upstreams_are_host_port_pairs(text: str, expected: list[tuple[str, int]]) -> None:
    assert parse_upstreams(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no upstream given: name the gRPC replicas as HOST:PORT[,HOST:PORT...]"),
        ("127.0.0.1", "bad upstream '127.0.0.1': expected HOST:PORT, e.g. 127.0.0.1:50051"),
        (":50051", "bad upstream ':50051': expected HOST:PORT, e.g. 127.0.0.1:50051"),
        ("a:1,,b:2", "bad upstream list 'a:1,,b:2': an empty entry between commas"),
        ("a:0", "bad upstream 'a:0': the port must be a number from 1 to 65535"),
        ("a:65536", "bad upstream 'a:65536': the port must be a number from 1 to 65535"),
        ("a:http", "bad upstream 'a:http': the port must be a number from 1 to 65535"),
        ("::1:50051", "bad upstream '::1:50051': write an IPv6 address in brackets, e.g. [::1]:50051"),
    ],
)
def test_a_bad_upstream_is_one_clear_sentence(text: str, message: str) -> None:
    with pytest.raises(GatewayError) as raised:
        parse_upstreams(text)
    assert str(raised.value) == message


def test_upstreams_resolve_once_and_the_same_replica_twice_is_refused() -> None:
    everywhere = "0.0.0.0"  # noqa: S104
    assert resolve_upstreams([("127.0.0.1", 1), (everywhere, 2)]) == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    with pytest.raises(GatewayError) as raised:
        resolve_upstreams([("127.0.0.1", 1), (everywhere, 1)])
    assert str(raised.value) == "upstreams 127.0.0.1:1 and 0.0.0.0:1 are the same replica (127.0.0.1:1)"
    with pytest.raises(GatewayError) as raised:
        resolve_upstreams([("no-such-host.invalid", 1)])
    assert str(raised.value).startswith("upstream no-such-host.invalid:1: cannot resolve 'no-such-host.invalid'")


def test_the_descriptor_loads_dependencies_first_and_has_what_errors_need() -> None:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_set().file
    for file in files:  # fails if a file comes before one it imports
        pool.AddSerializedFile(file.SerializeToString())
    for name in ("google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.BadRequest"):
        pool.FindMessageTypeByName(name)
    for service in SERVICES:
        assert len(pool.FindServiceByName(service.full_name).methods) == len(service.methods)
    for file in files:
        for proto_service in file.service:
            for method in proto_service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                assert rule.response_body == "", method.name  # Envoy 1.40 refuses it
                assert all(b.response_body == "" for b in rule.additional_bindings), method.name


def test_every_rest_path_has_a_v1_twin() -> None:
    for service in SERVICES:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            main = getattr(rule, rule.WhichOneof("pattern"))
            twins = [getattr(b, b.WhichOneof("pattern")) for b in rule.additional_bindings]
            assert twins == [f"/v1{main}"], method.full_name


@pytest.mark.parametrize(
    ("host", "connect", "expected"),
    [
        ("0.0.0.0", True, "127.0.0.1"),  # noqa: S104
        ("[::]", True, "::1"),
        ("0.0.0.0", False, "0.0.0.0"),  # noqa: S104
        ("127.0.0.2", True, "127.0.0.2"),
    ],
)
def test_addresses_become_ip_literals_envoy_can_use(host: str, connect: bool, expected: str) -> None:
    assert ip_for(host, 1, connect=connect) == expected


def test_a_name_is_resolved_once() -> None:
    assert ip_for("localhost", 1, connect=True) in {"127.0.0.1", "::1"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_wheel_ships_the_gateway_files(tmp_path: Path) -> None:
    """`pip install .` must get envoy.yaml and the Lua: build a wheel from a copy of the sources."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "server", source / "server", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("agenttasks-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"agenttasks/gateway/envoy.yaml", "agenttasks/gateway/rest.lua"} <= names
        shipped = yaml.safe_load(archive.read("agenttasks/gateway/envoy.yaml"))
    assert shipped == load_template()


def test_the_stats_listener_forwards_only_get_stats_prometheus_to_admin_and_passes_envoy_validate(
    tmp_path: Path,
) -> None:
    """`--gateway-metrics-port`: a listener of its own, one exact route, to the admin port."""
    descriptor = tmp_path / "d.binpb"
    descriptor.write_bytes(descriptor_set().SerializeToString())
    common: dict[str, Any] = {"listen": ("127.0.0.1", 0), "upstreams": [("127.0.0.1", 50051)], "descriptor": descriptor}
    with pytest.raises(ValueError, match="admin port"):
        render(**common, stats=("127.0.0.1", 0))
    config = render(**common, admin=("127.0.0.1", 19901), stats=("0.0.0.0", 0))  # noqa: S104 - a public stats port
    static = config["static_resources"]
    assert [found["name"] for found in static["listeners"]] == ["rest", "stats"]
    (stats,) = [found for found in static["listeners"] if found["name"] == "stats"]
    assert stats["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 0}  # noqa: S104
    (host,) = stats["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    (route,) = host["routes"]
    assert route["match"]["path"] == "/stats/prometheus"
    assert route["route"]["cluster"] == "envoy_admin"
    admin = next(c for c in static["clusters"] if c["name"] == "envoy_admin")
    (group,) = admin["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]] == [
        {"address": "127.0.0.1", "port_value": 19901}
    ]
    validate(write_config(config, tmp_path / "envoy.json"), cwd=tmp_path)
    # Without it, neither the listener nor the admin cluster is there.
    plain = render(**common)["static_resources"]
    assert [c["name"] for c in plain["clusters"]] == ["agenttasks"]
    assert "stats" not in [found["name"] for found in plain["listeners"]]


def test_the_access_log_is_on_every_listener_names_no_credential_and_passes_envoy_validate(tmp_path: Path) -> None:
    """With JSON logs, both of `agenttasks gateway`'s listeners write an access line per call
    (observe/logs.py reads them back); the headers it names are never credentials."""
    descriptor = tmp_path / "d.binpb"
    descriptor.write_bytes(descriptor_set().SerializeToString())
    config = render(
        listen=("127.0.0.1", 0),
        upstreams=[("127.0.0.1", 50051)],
        descriptor=descriptor,
        grpc_front=("127.0.0.1", 0),
        access_log=True,
    )
    for listener in config["static_resources"]["listeners"]:
        (logger,) = listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
        fields = logger["typed_config"]["log_format"]["json_format"]
        assert {"method", "path", "status", "duration_ms", "request_id", "upstream"} <= fields.keys()
        named = {header.lower() for value in fields.values() for header in re.findall(r"%REQ\(([^)]*)\)%", value)}
        assert not {part for header in named for part in header.split("?:")} & {"authorization", "x-api-key"}
    validate(write_config(config, tmp_path / "envoy.json"), cwd=tmp_path)
    plain = render(listen=("127.0.0.1", 0), upstreams=[("127.0.0.1", 50051)], descriptor=descriptor)
    (rest,) = plain["static_resources"]["listeners"]
    assert "access_log" not in rest["filter_chains"][0]["filters"][0]["typed_config"]  # text logs: none
