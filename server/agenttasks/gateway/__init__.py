"""The REST gateway: Envoy's gRPC-JSON transcoder run as a child process of `agenttasks serve`.

`descriptor` builds what the transcoder reads from the generated modules, `config` renders
envoy.yaml for one run, `launcher` runs, watches and stops Envoy. docs/gateway.md has the why.
"""

from agenttasks.gateway.config import GatewayError
from agenttasks.gateway.launcher import Gateway, check_port, envoy_binary

__all__ = ["Gateway", "GatewayError", "check_port", "envoy_binary"]
