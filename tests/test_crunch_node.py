"""crunch-node, the coordinators' runtime, end to end on our client and hosts (issue 21).

As a coordinator's workspace runs it, without Docker: crunch-node 0.1.101 from the registry and
this project in one Python 3.12 venv (its image's Python; the Dockerfile's line pointed at us),
the workspace made by its own scaffold (`crunch-node init --pack ...`) with its challenge
package installed as the image installs it, PostgreSQL from the OS packages, crunch-node's
`init_db`, and our local orchestrator serving the pack's example submissions the way the
workspace's orchestrator container does (sync_examples.py: each example becomes `main.py` beside
a copy of `cruncher.py`).

- tournament pack: its report worker and its own `scripts/verify_e2e.py` (one round of
  inference and scoring through the tournament API); Postgres then holds each model's
  predictions and scores.
- realtime pack: its predict worker, its pyth feed pointed at a local stand-in of the Hermes
  API (tests/hermes.py); Postgres holds a prediction of every model for each round.

Marked `e2e` (.ci/run runs it as a job of its own, beside the install tests).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from model_runner.process import free_port
from tests.hermes import BTC_USD, hermes_stand_in
from tests.hosts import ROOT, until_sync
from tests.postgres import Postgres, postgres_server
from tests.venvs import make_venv, pip, pip_check

# A fresh venv (about 45 s) and the workers' start: more than the suite's 120 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CRUNCH_NODE = "crunch-node==0.1.101"
CRUNCH_ID = "e2e-challenge"
PACKAGE = CRUNCH_ID.replace("-", "_")
EXAMPLE_MODELS = {"tournament": {"mean-reversion-tracker", "median-price-tracker",
                                 "price-per-sqft-tracker"},
                  "realtime": {"contrarian-tracker", "mean-reversion-tracker",
                               "momentum-tracker"}}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_venv(tmp_path_factory.mktemp("crunch-node-e2e"), "3.12")
    pip(folder, "install", "-q", CRUNCH_NODE, str(ROOT))
    assert pip_check(folder) == ""
    return folder


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


def scaffold(venv: Path, pack: str, parent: Path) -> Path:
    """crunch-node's own scaffold (no web UI clone: it needs GitHub, and the UI is not under
    test), with the challenge package installed as the node image installs it."""
    subprocess.run([str(venv / "bin" / "crunch-node"), "init", CRUNCH_ID, "--pack", pack,
                    "--output-dir", str(parent), "--no-webapp-clone"],
                   check=True, capture_output=True, timeout=120)
    workspace = parent / CRUNCH_ID
    pip(venv, "install", "-q", str(workspace / "challenge"))
    return workspace


def submissions(workspace: Path, into: Path) -> list[Path]:
    """The pack's examples as orchestrator submissions, as the workspace's sync_examples.py makes
    them (it hard-codes the container's /app paths, so it cannot run here as it is)."""
    package = workspace / "challenge" / PACKAGE
    folders = []
    for example in sorted((package / "examples").glob("*.py")):
        if example.name == "__init__.py" or example.name.startswith("_"):
            continue
        folder = into / example.stem.replace("_", "-")
        folder.mkdir(parents=True)
        (folder / "cruncher.py").write_text((package / "cruncher.py").read_text())
        source = re.sub(rf"from\s+{PACKAGE}(\.cruncher)?\s+import", "from cruncher import",
                        example.read_text())
        (folder / "main.py").write_text(source)
        (folder / "requirements.txt").write_text("# Auto-generated from challenge example.\n")
        folders.append(folder)
    return folders


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[
        subprocess.Popen[bytes]]:
    """A worker for the duration of the block, its output in `log`; stopped with SIGTERM (what
    Docker sends), then killed."""
    with log.open("wb") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                 cwd=cwd, start_new_session=True)
        try:
            yield child
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()


def node_environment(venv: Path, workspace: Path, database: dict[str, str],
                     orchestrator_port: int) -> dict[str, str]:
    """What the workspace's docker-compose.yml gives its workers, on this machine's addresses."""
    return {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/"),
        "PYTHONUNBUFFERED": "1",
        # The image's PYTHONPATH (/app holds node/config, node/extensions, node/api).
        "PYTHONPATH": str(workspace / "node"),
        **database,
        "CRUNCH_ID": CRUNCH_ID, "NETWORK": "devnet",
        "MODEL_RUNNER_NODE_HOST": "127.0.0.1", "MODEL_RUNNER_NODE_PORT": str(orchestrator_port),
        "MODEL_RUNNER_TIMEOUT_SECONDS": "60", "MODEL_BASE_CLASSNAME": "cruncher.ModelBaseClass",
        "SCORING_FUNCTION": f"{PACKAGE}.scoring:score_prediction",
        "API_ROUTES_DIR": str(workspace / "node" / "api"), "API_READ_AUTH": "false",
    }


@contextmanager
def node(venv: Path, postgres: Postgres, pack: str, folder: Path) -> Iterator[
        tuple[Path, dict[str, str], Path]]:
    """A scaffolded workspace of `pack`, its database initialised, and our local orchestrator
    serving its examples; yields (workspace, the workers' environment, the logs' folder)."""
    workspace = scaffold(venv, pack, folder)
    logs = folder / "logs"
    logs.mkdir()
    port = free_port()
    env = node_environment(venv, workspace, postgres.create_database(pack, pack), port)
    init = subprocess.run([str(venv / "bin" / "python"), "-m", "crunch_node.db.init_db"],
                          env=env, cwd=workspace / "node", capture_output=True, text=True,
                          timeout=180)
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    models = submissions(workspace, folder / "submissions")
    with process([str(venv / "bin" / "model-runner-local-orchestrator"), "--crunch-id",
                  CRUNCH_ID, "--port", str(port), *map(str, models)],
                 env, logs / "orchestrator.log", folder):
        until_sync(lambda: (logs / "orchestrator.log").read_text().count(" RUNNING ")
                   >= len(models), timeout=60)
        yield workspace, env, logs


def test_tournament_verify_e2e_passes_and_postgres_holds_every_model_s_scores(
        venv: Path, postgres: Postgres, tmp_path: Path) -> None:
    with node(venv, postgres, "tournament", tmp_path) as (workspace, env, logs):
        api = free_port()
        # The report worker's app as its module serves it; its __main__ hard-codes
        # 0.0.0.0:8000 (a container's port, mapped by compose), so uvicorn gets the address.
        with process([str(venv / "bin" / "python"), "-m", "uvicorn",
                      "crunch_node.workers.report_worker:app", "--host", "127.0.0.1",
                      "--port", str(api)], env, logs / "report-worker.log", workspace / "node"):
            verify = subprocess.run(
                [str(venv / "bin" / "python"), "scripts/verify_e2e.py"],
                env={**env, "REPORT_API_URL": f"http://127.0.0.1:{api}",
                     "E2E_VERIFY_TIMEOUT_SECONDS": "180", "E2E_VERIFY_POLL_SECONDS": "1"},
                cwd=workspace / "node", capture_output=True, text=True, timeout=240)
            assert verify.returncode == 0, (
                verify.stdout[-4000:] + verify.stderr[-2000:]
                + (logs / "report-worker.log").read_text()[-4000:])
            assert "[verify-e2e] success" in verify.stdout

    rows = postgres.psql("tournament", (
        "SELECT p.model_id, count(*), count(s.id) FILTER (WHERE s.success) FROM predictions p "
        "LEFT JOIN scores s ON s.prediction_id = p.id WHERE p.status = 'SCORED' GROUP BY 1"),
        user="tournament")
    counted = {model: (int(predicted), int(scored))
               for model, predicted, scored in (row.split("|") for row in rows.splitlines())}
    assert set(counted) == EXAMPLE_MODELS["tournament"], rows
    samples = len(json.loads(
        (workspace / "challenge" / PACKAGE / "data" / "out_of_sample.json").read_text()))
    # One prediction per sample per model, each scored.
    assert all(count == (samples, samples) for count in counted.values()), (counted, samples)


def test_realtime_predict_worker_stores_every_model_s_prediction_each_round(
        venv: Path, postgres: Postgres, tmp_path: Path) -> None:
    with ExitStack() as stack:
        hermes = stack.enter_context(hermes_stand_in())
        workspace, env, logs = stack.enter_context(node(venv, postgres, "realtime", tmp_path))
        feed = {"FEED_SOURCE": "pyth", "FEED_SUBJECTS": "BTCUSDT", "FEED_KIND": "candle",
                "FEED_GRANULARITY": "1m", "FEED_POLL_SECONDS": "1", "FEED_BACKFILL_MINUTES": "5",
                "FEED_CANDLES_WINDOW": "120", "FEED_OPT_hermes_url": hermes.url,
                "FEED_OPT_feed_id_BTCUSDT": BTC_USD, "FEED_OPT_poll_seconds": "1",
                "CHECKPOINT_INTERVAL_SECONDS": "60"}
        worker = stack.enter_context(process(
            [str(venv / "bin" / "python"), "-m", "crunch_node.workers.predict_worker"],
            {**env, **feed}, logs / "predict-worker.log", workspace / "node"))

        def rounds() -> dict[str, set[str]]:
            """Each round's input and the models with a stored prediction for it."""
            found: dict[str, set[str]] = {}
            rows = postgres.psql("realtime", "SELECT input_id, model_id FROM predictions "
                                 "WHERE status <> 'FAILED' AND status <> 'ABSENT'",
                                 user="realtime")
            for row in rows.splitlines():
                input_id, model_id = row.split("|")
                found.setdefault(input_id, set()).add(model_id)
            return found

        def two_full_rounds() -> bool:
            assert worker.poll() is None, (logs / "predict-worker.log").read_text()[-4000:]
            return sum(models == EXAMPLE_MODELS["realtime"]
                       for models in rounds().values()) >= 2

        # The pack predicts every 15 s: two rounds and the workers' start fit in 90 s.
        try:
            until_sync(two_full_rounds, timeout=90)
        except AssertionError:
            raise AssertionError(f"rounds: {rounds()}\n"
                                 + (logs / "predict-worker.log").read_text()[-6000:]) from None
        assert hermes.answered.get("/v2/updates/price/latest", 0) >= 2, hermes.answered
        every_round = postgres.psql("realtime", "SELECT count(DISTINCT input_id), "
                                    "count(*) FILTER (WHERE status IN ('FAILED', 'ABSENT')) "
                                    "FROM predictions", user="realtime")
        rounds_seen, failed = map(int, every_round.split("|"))
        assert failed == 0, (every_round, rounds())
        assert rounds_seen >= 2
