"""agenttasks' benchmark harness: `python -m bench` (see docs/benchmarks.md)."""

import os

USER_ENV = dict(os.environ)
"""The environment the harness was started with: what the processes it starts get."""

# The harness starts processes while its gRPC channels are open. Every child execs at once, so
# grpcio's fork handlers have nothing to do here except print warnings. (Not passed to children.)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
