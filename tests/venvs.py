"""Fresh venvs for the install tests: an interpreter of a given version, pip in a venv, and
what the venv holds."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def interpreter(version: str) -> str:
    """A Python `version` interpreter: on PATH, or pyenv's (its shim refuses unselected ones)."""
    pyenv = sorted(Path("/root/.pyenv/versions").glob(f"{version}*/bin/python{version}"))
    for candidate in [*pyenv, shutil.which(f"python{version}")]:
        if candidate and subprocess.run([str(candidate), "-V"],
                                        capture_output=True).returncode == 0:
            return str(candidate)
    pytest.fail(f"no Python {version} interpreter (python{version} on PATH, or pyenv's): "
                "install it to run the install tests")


def make_venv(folder: Path, version: str) -> Path:
    subprocess.run([interpreter(version), "-m", "venv", str(folder)], check=True, timeout=120)
    return folder


def pip(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip",
                             "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=900, cwd=venv)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def versions(venv: Path) -> dict[str, str]:
    listed = json.loads(pip(venv, "list", "--format=json").stdout)
    return {entry["name"].lower().replace("_", "-"): entry["version"] for entry in listed}


def pip_check(venv: Path) -> str:
    """What `pip check` says ('' when every requirement is met)."""
    result = pip(venv, "check", check=False)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def installed(venv: Path, name: str) -> str | None:
    """The version of distribution `name` in `venv`, or None."""
    return versions(venv).get(name.lower().replace("_", "-"))
