"""The committed generated code matches what proto/ generates today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.hosts import ROOT


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    committed = ROOT / "model_runner" / "wire" / "generated"
    stale = []
    for path in sorted(out.rglob("*.py")):
        relative = path.relative_to(out)
        if not (committed / relative).exists() or not filecmp.cmp(path, committed / relative,
                                                                  shallow=False):
            stale.append(str(relative))
    extra = [str(p.relative_to(committed)) for p in committed.rglob("*.py")
             if not (out / p.relative_to(committed)).exists()]
    assert not stale and not extra, (
        f"generated code is stale ({stale + extra}); run: python scripts/generate_proto.py")
