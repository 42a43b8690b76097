"""Regenerate the code built from proto/*.proto.

    python scripts/generate_proto.py            # rewrite both generated folders
    python scripts/generate_proto.py --out DIR  # write both under DIR (the staleness test does)

Two outputs:
- model_runner/wire/generated: betterproto2 messages and grpclib stubs, what both halves use;
- model_runner/wire/pb2: protobuf `*_pb2` modules. The host parses requests with them
  (protobuf's C parser: linear time whatever the bytes), and model_runner_client/grpc/generated
  re-exports them under the import path and keyword spelling (`Argument(position=1,
  data=Variant(type=VariantType.JSON, value=...))`) of model-runner-client 0.14.

Needs the test extra (grpcio-tools, betterproto2-compiler, ruff); the compiler runs `ruff`, so the
interpreter's bin folder is put first on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GENERATED_DIR = ROOT / "model_runner" / "wire" / "generated"
PB2_DIR = ROOT / "model_runner" / "wire" / "pb2"
#: Where each output goes, relative to --out.
OUTPUTS = {"betterproto2": GENERATED_DIR.relative_to(ROOT), "pb2": PB2_DIR.relative_to(ROOT)}



def _protos() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("*.proto"))


def _run_protoc(*options: str) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *options, *_protos()]
    subprocess.run(cmd, check=True, cwd=PROTO_DIR, env=env, capture_output=True)


def _replace(tmp: str, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tmp, out)


def generate_betterproto2(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run_protoc(f"--python_betterproto2_out={tmp}",
                    "--python_betterproto2_opt=client_generation=async,server_generation=async")
        _replace(tmp, out)


def _fix_pb2(path: Path) -> None:
    text = path.read_text()
    # protoc writes `import commons_pb2`, a top-level module; ours live in a package.
    text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
    # The runtime-version check would demand the very protobuf release that generated the file
    # (7.x here) from every coordinator; these are plain proto3 messages that protobuf >= 5.26
    # builds (tests/test_compat_api.py imports them), so the check is left out.
    text = re.sub(r"^_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\)\n", "", text,
                  flags=re.M | re.S)
    text = re.sub(r"^from google\.protobuf import runtime_version as _runtime_version\n", "",
                  text, flags=re.M)
    text = re.sub(r"^# Protobuf Python Version: .*\n", "", text, flags=re.M)
    path.write_text(text)


def generate_pb2(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run_protoc(f"--python_out={tmp}", f"--pyi_out={tmp}")
        for path in Path(tmp).glob("*_pb2.py*"):
            _fix_pb2(path)
        Path(tmp, "__init__.py").write_text(
            '"""protobuf messages of proto/*.proto (scripts/generate_proto.py writes them)."""\n')
        _replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT,
                        help="project root to write under (default: this checkout)")
    args = parser.parse_args()
    generate_betterproto2(args.out / OUTPUTS["betterproto2"])
    generate_pb2(args.out / OUTPUTS["pb2"])
    print(f"generated {', '.join(str(args.out / o) for o in OUTPUTS.values())}")


if __name__ == "__main__":
    main()
