"""Generate the Python modules of the API from proto/, or check that the committed ones match.

One script owns every generated file, so the committed `*_pb2*` modules can only come from
`proto/`. `--check` regenerates into a scratch folder and fails on any difference; CI runs it.

Usage: python scripts/gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("agenttasks") / "v1"
OUT_ROOT = ROOT / "server"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc over proto/agenttasks/v1 into out_root; return the files written."""
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    target = out_root / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *sources,
    ]
    # protoc finds its mypy plugins on PATH: the ones installed beside this interpreter, even
    # when it is run as .venv/bin/python without activating the venv.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PATH": path})
    init = target / "__init__.py"
    init.write_text('"""Generated from proto/agenttasks/v1 by scripts/gen_proto.py; do not edit."""\n')
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p == init)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed modules differ from proto/")
    args = parser.parse_args()
    if not args.check:
        for path in generate(OUT_ROOT):
            print(path.relative_to(ROOT))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = {p.name: p for p in generate(Path(scratch))}
        committed_dir = OUT_ROOT / PACKAGE_DIR
        committed = {
            p.name: p for p in committed_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py"
        }
        drift = sorted(set(fresh) ^ set(committed))
        drift += sorted(
            n for n in set(fresh) & set(committed) if not filecmp.cmp(fresh[n], committed[n], shallow=False)
        )
        if drift:
            print("generated modules drifted from proto/; run: python scripts/gen_proto.py", file=sys.stderr)
            for name in drift:
                print(f"  {PACKAGE_DIR / name}", file=sys.stderr)
            return 1
    print("generated modules match proto/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
