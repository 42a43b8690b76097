"""The client's API as mypy (strict) sees it: typed keywords everywhere, results typed by
`returns=` (examples/typed_coordinator.py), and the example runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.hosts import EXAMPLES, HostProcess, host_env

TYPED = EXAMPLES / "typed_coordinator.py"


def mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                           str(path)], capture_output=True, text=True, timeout=300)


def test_the_typed_example_passes_mypy_strict() -> None:
    result = mypy(TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_keyword_and_a_wrong_output_type_are_caught(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    text = TYPED.read_text()
    text = text.replace("timeout=2.0,", "timout=2.0,")  # as in from_addresses(..., **options)
    text = text.replace("sum(r.output)", "r.output.upper()")  # a list has no upper()
    wrong.write_text(text)
    result = mypy(wrong)
    assert result.returncode == 1
    assert 'Unexpected keyword argument "timout"' in result.stdout, result.stdout
    assert '"list[float]" has no attribute "upper"' in result.stdout, result.stdout


def test_the_typed_example_runs(good_host: HostProcess) -> None:
    result = subprocess.run([sys.executable, str(TYPED), good_host.address],
                            capture_output=True, text=True, timeout=60, env=host_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{{'{good_host.address}': 0.0}}"
