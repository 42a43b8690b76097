"""`model-runner check` on good, broken and example submissions (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts import BASE, SUBMISSIONS, TEST_SUBMISSIONS, HostProcess, host_env, until_sync

TRACKER = "from starter_challenge.tracker import TrackerBase\n"
GOOD = TRACKER + ("class T(TrackerBase):\n    def __init__(self, scale=1.0):\n"
                  "        self.scale = scale\n"
                  "    def predict(self, asset, horizon, step=1):\n"
                  "        return [self.scale] * horizon\n")


def check(code: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_runner", "check", "--code-directory",
                           str(code), "--base-class", BASE, *args], capture_output=True,
                          text=True, timeout=60, env=host_env())


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_good_submission_sets_up_and_answers(tmp_path: Path) -> None:
    code = write(tmp_path, {"main.py": GOOD})
    result = check(code, "--init-args", '{"scale": 0.5}', "--call", "predict",
                   "--args", '["BTC", 3]')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "found: main.T implements" in result.stdout
    assert "called: predict(\"BTC\", 3) -> [0.5, 0.5, 0.5] (as the client decodes it: list)" \
        in result.stdout
    assert "result: a model would set up" in result.stdout
    assert "problem" not in result.stdout


@pytest.mark.parametrize("example", ["good_tracker", "async_tracker", "slow_tracker"])
def test_the_example_submissions(example: str) -> None:
    result = check(SUBMISSIONS / example, "--call", "predict", "--args", '["BTC", 1]')
    assert result.returncode == 0, result.stdout
    assert "called: predict" in result.stdout


BROKEN = {
    "a syntax error": ({"main.py": GOOD, "helpers.py": "def broken(:\n    pass\n"},
                       0, ["helpers.py:1:", "fix the syntax error"]),
    "a missing requirement": ({"main.py": GOOD, "requirements.txt":
                               "msgspec\nno-such-package-here>=1  # needed\n"},
                              0, ["not installed: no-such-package-here", "pip install -r"]),
    "no subclass": ({"main.py": "class NotATracker:\n    pass\n"}, 1,
                    ["no class in", "classes considered: main.NotATracker",
                     "define a concrete class"]),
    "a raising constructor": ({"main.py": TRACKER + "class T(TrackerBase):\n"
                               "    def __init__(self):\n        raise ValueError('no data')\n"},
                              1, ["SETUP_FAILED", "T() raised ValueError: no data"]),
    "a shadowed module": ({"queue.py": GOOD}, 1, ["the name 'queue' already stands for a module",
                                                  "rename it"]),
    "a failing import": ({"main.py": "import not_installed_anywhere\n" + GOOD}, 1,
                         ["main: ModuleNotFoundError", "main.py:1)"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_submission_is_explained(case: str, tmp_path: Path) -> None:
    files, code, needles = BROKEN[case]
    result = check(write(tmp_path, files))
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stdout, result.stdout


def test_a_method_that_raises_when_called(tmp_path: Path) -> None:
    code = write(tmp_path, {"main.py": GOOD.replace("return [self.scale] * horizon",
                                                    "raise RuntimeError('oops')")})
    result = check(code, "--call", "predict", "--args", '["BTC", 1]')
    assert result.returncode == 1
    assert "problem: predict(\"BTC\", 1) -> FAILURE: MODEL_FAILED" in result.stdout
    assert "raised RuntimeError: oops" in result.stdout


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    result = check(tmp_path / "missing")
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_the_host_logs_what_check_finds_and_still_serves(tmp_path: Path) -> None:
    code = write(tmp_path, {"main.py": GOOD, "helpers.py": "def broken(:\n",
                            "requirements.txt": "no-such-package-here\n"})
    host = HostProcess(code).start()
    try:
        # Logged right after the line that says it serves (which start() waits for).
        until_sync(lambda: "not installed: no-such-package-here" in host.log
                   and "helpers.py:1:" in host.log)
        assert "submission check:" in host.log
        assert host.proc is not None and host.proc.poll() is None  # and it still serves
    finally:
        host.stop()


def test_the_toolbox_submission_is_fine() -> None:
    result = check(TEST_SUBMISSIONS / "toolbox", "--call", "echo", "--args", '{"x": 1}')
    assert result.returncode == 0 and "{'args': [], 'kwargs': {'x': 1}}" in result.stdout
