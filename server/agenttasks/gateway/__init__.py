"""The REST gateway: Envoy's gRPC-JSON transcoder, run as a child process of `agenttasks serve`
in front of its own gRPC server, or by `agenttasks gateway` alone in front of several replicas
(then also proxying native gRPC).

`descriptor` builds what the transcoder reads from the generated modules, `config` renders
envoy.yaml for one run, `launcher` runs, watches and stops Envoy. docs/gateway.md has the why.
"""

from agenttasks.gateway.config import GatewayError, parse_upstreams, resolve_upstreams
from agenttasks.gateway.launcher import Gateway, Upstream, check_port, envoy_binary

__all__ = [
    "Gateway",
    "GatewayError",
    "Upstream",
    "check_port",
    "envoy_binary",
    "parse_upstreams",
    "resolve_upstreams",
]
