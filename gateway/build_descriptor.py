"""Write the descriptor set Envoy's transcoder reads (default: gateway/agenttasks.binpb).

The set comes from the generated modules of `proto/` (see agenttasks/gateway/descriptor.py for
how and why), exactly as `agenttasks serve` builds it at start; this script is for running
`envoy -c envoy.yaml` or `envoy --mode validate` by hand and in CI. The output is not committed.

Usage: python gateway/build_descriptor.py [-o PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agenttasks.gateway.descriptor import write_descriptor_set

DEFAULT = Path(__file__).resolve().parent / "agenttasks.binpb"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT, help=f"where to write it (default {DEFAULT})")
    args = parser.parse_args()
    print(write_descriptor_set(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
