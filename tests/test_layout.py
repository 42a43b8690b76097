"""The package layout, both directions: the host never imports the client, the client loads no
host code beyond the wire layer, and every module in `wire/` is used by both halves."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIENT_LOADS_NO_HOST_CODE = """
import sys
import model_runner_client
import model_runner_client.model_concurrent_runners
import model_runner_client.security.credentials
import model_runner_client.utils.datatype_transformer
ours = [m for m in sys.modules if m.startswith("model_runner.")]
server = [m for m in ours if not m.startswith("model_runner.wire")]
assert not server, server
assert "model_runner.wire" in ours
"""

HOST_LOADS_NO_CLIENT = """
import importlib, pkgutil, sys
import model_runner
for module in pkgutil.walk_packages(model_runner.__path__, "model_runner."):
    if module.name != "model_runner.__main__":
        importlib.import_module(module.name)
client = [m for m in sys.modules if m.split(".")[0] == "model_runner_client"]
assert not client, client
assert "model_runner.check" in sys.modules and "model_runner.service" in sys.modules
"""


def test_the_client_loads_no_server_code() -> None:
    subprocess.run([sys.executable, "-c", CLIENT_LOADS_NO_HOST_CODE], check=True, timeout=60)


def test_the_host_loads_no_client_code() -> None:
    """Every host module imported, `model-runner check` included: none loads the client."""
    subprocess.run([sys.executable, "-c", HOST_LOADS_NO_CLIENT], check=True, timeout=60)


def _defined_in(module: str, name: str) -> str:
    """Where `from module import name` comes from: the submodule that defines what the package
    re-exports (`from model_runner.wire import decode_value` uses wire.variant)."""
    if module != "model_runner.wire":
        return f"{module}.{name}"
    import model_runner.wire

    value = getattr(model_runner.wire, name)
    return getattr(value, "__module__", None) or f"{module}.{name}"


def _imported(package: Path) -> set[str]:
    """Every `model_runner.wire...` module the sources under `package` import (absolute or
    relative, at any depth of the file)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        if "wire" in path.relative_to(ROOT).parts[:2]:
            continue  # the wire layer itself
        tree = ast.parse(path.read_text(), str(path))
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:-node.level]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                found = [module, *(_defined_in(module, a.name) for a in node.names)]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            names.update(n for n in found if n.startswith("model_runner.wire."))
    return names


def test_every_wire_module_serves_both_halves() -> None:
    """A module used by one half alone belongs to that half (wire/codec.py went to the host,
    wire/lean.py to the client)."""
    import model_runner.wire

    modules = {f"model_runner.wire.{m.name}"
               for m in pkgutil.iter_modules(model_runner.wire.__path__)}
    host = _imported(ROOT / "model_runner")
    client = _imported(ROOT / "model_runner_client")

    def used(by: set[str], module: str) -> bool:
        return any(name == module or name.startswith(module + ".") for name in by)

    one_sided = sorted(m for m in modules if not (used(host, m) and used(client, m)))
    assert not one_sided, (f"{one_sided}: used by one half only; move each to that half "
                           f"(host imports {sorted(host)}, client {sorted(client)})")
