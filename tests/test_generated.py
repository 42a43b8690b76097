"""The committed generated code matches what proto/ generates today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from generate_proto import OUTPUTS


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("regenerated")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_generated_code_is_fresh(regenerated: Path, output: str) -> None:
    out, committed = regenerated / OUTPUTS[output], ROOT / OUTPUTS[output]
    stale = []
    for path in sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi")):
        relative = path.relative_to(out)
        if not (committed / relative).exists() or not filecmp.cmp(path, committed / relative,
                                                                  shallow=False):
            stale.append(str(relative))
    extra = [str(p.relative_to(committed)) for p in committed.rglob("*")
             if p.suffix in (".py", ".pyi") and not (out / p.relative_to(committed)).exists()]
    assert not stale and not extra, (
        f"{output} code is stale ({stale + extra}); run: python scripts/generate_proto.py")
