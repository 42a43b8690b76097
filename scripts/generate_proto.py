"""Regenerate the betterproto2 messages and grpclib stubs from proto/*.proto.

    python scripts/generate_proto.py            # rewrite model_runner/wire/generated
    python scripts/generate_proto.py --out DIR  # write elsewhere (the staleness test does this)

Needs the test extra (grpcio-tools, betterproto2-compiler, ruff); the compiler runs `ruff`, so the
interpreter's bin folder is put first on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GENERATED_DIR = ROOT / "model_runner" / "wire" / "generated"


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
            f"--python_betterproto2_out={tmp}",
            "--python_betterproto2_opt=client_generation=async,server_generation=async",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=PROTO_DIR, env=env, capture_output=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GENERATED_DIR)
    args = parser.parse_args()
    generate(args.out)
    print(f"generated {args.out}")


if __name__ == "__main__":
    main()
