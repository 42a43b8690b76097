"""The two distributions install as the packages they replace are installed (issue 21).

- `model-runner-client` (the repository root) is what coordinators install: it meets crunch-node's
  `model-runner-client>=0.10.0` in one resolve, stays in place through crunch-node's own
  `pip install --upgrade crunch-node`, and replaces model-runner-client 0.14 without leaving any
  of its files behind.
- `model-runner` (host/pyproject.toml, the same sources) is what the orchestrator's host image
  installs after a submission's requirements, on python 3.13: it changes no package the
  submission pinned, and the host then serves and answers a Call.

Fresh venvs, packages from the registry: marked `install` (.ci/run runs them as a job).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from model_runner.process import ModelHostProcess
from model_runner.wire import DynamicSubclassServiceStub
from tests.hosts import BASE, EXAMPLES, ROOT, SUBMISSIONS, ok, set_up
from tests.venvs import make_venv, pip, pip_check, versions

pytestmark = [pytest.mark.install, pytest.mark.anyio]

HOST = ROOT / "host"
CRUNCH_NODE = "crunch-node==0.1.101"
OLD_CLIENT = "model-runner-client==0.14.0"
OUR_VERSION = "1.0.0"


def run(venv: Path, code: str) -> str:
    """`code` in the venv's Python, away from the checkout (so the installed package runs)."""
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                            text=True, timeout=120, cwd=venv)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


OURS_IMPORTS = ("import model_runner_client, model_runner_client.client; "
                "from model_runner_client import ModelRunnerClient; "
                "from model_runner_client.model_concurrent_runners import "
                "DynamicSubclassModelConcurrentRunner; print(model_runner_client.__file__)")


# --- coordinators: model-runner-client -------------------------------------------------------

@pytest.fixture(scope="module")
def crunch_node_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python 3.12 (crunch-node's floor and its image's), crunch-node and us in one resolve."""
    venv = make_venv(tmp_path_factory.mktemp("crunch-node"), "3.12")
    pip(venv, "install", "-q", CRUNCH_NODE, str(ROOT))
    return venv


def test_crunch_node_and_our_client_resolve_together(crunch_node_venv: Path) -> None:
    assert versions(crunch_node_venv)["model-runner-client"] == OUR_VERSION
    assert pip_check(crunch_node_venv) == ""
    run(crunch_node_venv, OURS_IMPORTS + "; import crunch_node.services.predict_components")


def test_crunch_nodes_own_upgrade_leaves_our_client_in_place(crunch_node_venv: Path) -> None:
    """The scaffold image's first step, run again over us."""
    pip(crunch_node_venv, "install", "-q", "--upgrade", "crunch-node")
    assert versions(crunch_node_venv)["model-runner-client"] == OUR_VERSION
    assert pip_check(crunch_node_venv) == ""
    run(crunch_node_venv, OURS_IMPORTS)


@pytest.fixture(scope="module")
def old_client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scaffold image's first step on a fresh image: crunch-node brings 0.14."""
    venv = make_venv(tmp_path_factory.mktemp("scaffold"), "3.12")
    pip(venv, "install", "-q", "--upgrade", CRUNCH_NODE)
    assert versions(venv)["model-runner-client"] == "0.14.0"
    return venv


def test_the_scaffold_line_without_no_deps_replaces_0_14_cleanly(old_client_venv: Path) -> None:
    """The scaffold's `pip install --force-reinstall --no-deps "model-runner-client @ ..."`,
    its URL pointed at us and `--no-deps` dropped (README): our dependencies come with us, and
    not one file of 0.14 is left under model_runner_client/ to shadow ours."""
    pip(old_client_venv, "install", "-q", "--force-reinstall",
        f"model-runner-client @ {ROOT.as_uri()}")
    assert versions(old_client_venv)["model-runner-client"] == OUR_VERSION
    assert pip_check(old_client_venv) == ""
    package = Path(run(old_client_venv, OURS_IMPORTS).strip().splitlines()[-1]).parent
    record = Path(run(old_client_venv, "import importlib.metadata as m; print(m.distribution("
                                       "'model-runner-client')._path)").strip())
    ours = {line.split(",", 1)[0] for line in (record / "RECORD").read_text().splitlines()}
    stale = sorted(str(path.relative_to(package.parent)) for path in package.rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts
                   and str(path.relative_to(package.parent)) not in ours)
    assert stale == [], stale


def test_the_scaffold_line_as_it_is_cannot_bring_our_dependencies(
        tmp_path: Path) -> None:
    """With `--no-deps` kept, pip installs none of what we import that 0.14 did not bring
    (grpclib, h2, ngh2...): pip check names them. The README's line drops `--no-deps`."""
    venv = make_venv(tmp_path / "venv", "3.12")
    pip(venv, "install", "-q", OLD_CLIENT)
    pip(venv, "install", "-q", "--force-reinstall", "--no-deps",
        f"model-runner-client @ {ROOT.as_uri()}")
    assert "grpclib" in pip_check(venv)


# --- the host image: model-runner, after a submission's requirements -------------------------

# Requirement sets a submission pins (python:3.13, the orchestrator's image): TensorFlow <= 2.16
# needs protobuf < 5; websockets 12-14 and cryptography 41 come with libraries of 2023-2024;
# numpy 2.1 and pandas 2.2.3 are their first wheels for 3.13.
SUBMISSION_REQUIREMENTS = {
    "protobuf-4": ["protobuf==4.25.3", "websockets==12.0", "cryptography==41.0.7"],
    "protobuf-5": ["protobuf==5.27.2", "websockets==13.1"],
    "dataframes": ["numpy==2.1.0", "pandas==2.2.3", "pyarrow==18.1.0", "websockets==14.2"],
}


@pytest.mark.parametrize("requirements", sorted(SUBMISSION_REQUIREMENTS))
async def test_the_host_installs_beside_a_submissions_requirements(
        tmp_path: Path, requirements: str) -> None:
    venv = make_venv(tmp_path / "venv", "3.13")
    pinned = SUBMISSION_REQUIREMENTS[requirements]
    (tmp_path / "requirements.txt").write_text("\n".join(pinned) + "\n")
    pip(venv, "install", "-q", "-r", str(tmp_path / "requirements.txt"))
    before = versions(venv)
    extra = "[dataframes]" if requirements == "dataframes" else ""
    pip(venv, "install", "-q", f"{HOST}{extra}")
    after = versions(venv)
    changed = {name: (version, after.get(name)) for name, version in before.items()
               if after.get(name) != version}
    assert changed == {}, changed
    assert pip_check(venv) == ""
    # The host alone: none of the client's own dependencies.
    assert not {"ngh2", "model-runner-client"} & set(after), sorted(after)
    assert after["model-runner"] == OUR_VERSION
    host = ModelHostProcess(SUBMISSIONS / "good_tracker", python=str(venv / "bin" / "python"),
                            python_path=[EXAMPLES], cwd=tmp_path, host="::")
    host.start()
    try:
        from grpclib.client import Channel
        async with Channel("127.0.0.1", host.port) as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub, BASE)
            await ok(stub, "tick", {"BTC": 1.0})
            assert isinstance(await ok(stub, "predict", "BTC", 60), list)
    finally:
        host.stop()
    where = run(venv, "import importlib.util, model_runner; print(model_runner.__file__, "
                      "importlib.util.find_spec('model_runner_client'))")
    assert str(ROOT) not in where and where.split()[-1] == "None", where


def test_check_runs_on_the_host_alone(tmp_path: Path) -> None:
    """`model-runner check` drives the host's model core and decodes answers with the wire
    layer: the host's distribution, without the client, runs it (it once exited 2 asking for
    model-runner-client)."""
    venv = make_venv(tmp_path / "venv", "3.13")
    pip(venv, "install", "-q", str(HOST))
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    result = subprocess.run([str(venv / "bin" / "model-runner"), "check", "--code-directory",
                             str(SUBMISSIONS / "good_tracker"), "--base-class", BASE,
                             "--call", "predict", "--args", '["BTC", 2]'],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "called: predict(\"BTC\", 2) -> " in result.stdout, result.stdout
    assert "result: a model would set up" in result.stdout, result.stdout


# --- the README's lines: path, git URL, built wheel ------------------------------------------

def test_wheels_and_git_urls_build_both_distributions(tmp_path: Path) -> None:
    """The README's install lines from a git URL (a clone of this checkout's tracked files) and
    from built wheels: each distribution holds what it says."""
    clone = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m",
                    "snapshot"], cwd=clone, check=True)
    venv = make_venv(tmp_path / "venv", "3.12")
    pip(venv, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
        # (`name @ git+file:///...` is refused by older pips' URL check; https URLs are not)
        f"git+{clone.as_uri()}#subdirectory=host", f"git+{clone.as_uri()}")
    wheels = {path.name.split("-")[0]: path for path in (tmp_path / "dist").glob("*.whl")}
    assert sorted(wheels) == ["model_runner", "model_runner_client"], wheels
    with zipfile.ZipFile(wheels["model_runner"]) as host_wheel:
        host_top = {name.split("/")[0] for name in host_wheel.namelist()}
    with zipfile.ZipFile(wheels["model_runner_client"]) as client_wheel:
        client_top = {name.split("/")[0] for name in client_wheel.namelist()}
    assert "model_runner" in host_top and "model_runner_client" not in host_top, host_top
    assert {"model_runner", "model_runner_client"} <= client_top, client_top
    pip(venv, "install", "-q", str(wheels["model_runner_client"]))
    assert pip_check(venv) == ""
    run(venv, OURS_IMPORTS)
