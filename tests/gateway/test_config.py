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

from agenttasks.gateway import envoy_binary
from agenttasks.gateway.config import LUA, ip_for, load_template, render, template_text, write_config
from agenttasks.gateway.descriptor import SERVICES, descriptor_set, response_bodies

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


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    found: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return found


def route_for_grpc_path(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The route Envoy picks for a transcoded call (its gRPC path, no query string)."""
    for route in routes(config):
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
    config = render(listen=("127.0.0.1", 0), upstream=(everywhere, 50051), descriptor=descriptor)
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
