from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, settings

from model_runner.wire import DynamicSubclassServiceStub
from model_runner_client.transports import TRANSPORTS
from tests.deployment import Deployment
from tests.hosts import (
    BASE,
    HOST_LOOPS,
    SUBMISSIONS,
    TEST_SUBMISSIONS,
    HostProcess,
    loop_env,
    set_up,
    until_sync,
)
from tests.peer import Peer

settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("default")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """asyncio (grpclib is asyncio-only); module-scoped, so module-scoped async fixtures (a
    host in the test process, a secure orchestrator) can use it."""
    return "asyncio"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """A secure host's deployment as the orchestrator makes it (tests/deployment.py)."""
    return Deployment(tmp_path_factory.mktemp("deployment"))


def _module_host(code_directory: Path) -> Any:
    """A model host serving `code_directory`, shared by the tests of a module."""

    @pytest.fixture(scope="module")
    def host() -> Iterator[HostProcess]:
        process = HostProcess(code_directory).start()
        yield process
        process.stop()

    return host


toolbox_host = _module_host(TEST_SUBMISSIONS / "toolbox")


@pytest.fixture(params=HOST_LOOPS, scope="module")
def host_loop(request: pytest.FixtureRequest) -> str:
    """Runs a module's tests once per event loop the host can run on."""
    return str(request.param)


@pytest.fixture(scope="module")
def toolbox_host_on_each_loop(host_loop: str) -> Iterator[HostProcess]:
    """The toolbox host on asyncio, then on uvloop (the attacks against the host run on both)."""
    process = HostProcess(TEST_SUBMISSIONS / "toolbox", "--log-level", "INFO",
                          env=loop_env(host_loop)).start()
    until_sync(lambda: f"event loop: {host_loop}" in process.log)
    yield process
    process.stop()
good_host = _module_host(SUBMISSIONS / "good_tracker")
raising_host = _module_host(SUBMISSIONS / "raising_tracker")
bad_host = _module_host(SUBMISSIONS / "no_subclass")


@pytest.fixture
async def toolbox(toolbox_host: HostProcess) -> AsyncIterator[DynamicSubclassServiceStub]:
    """The shared toolbox host's model, freshly set up for each test (Rest, then Setup with
    arguments 1, "two", three=3.0, which `init` returns)."""
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        code, message = await set_up(stub, BASE, 1, "two", three=3.0)
        assert code == "SUCCESS", message
        yield stub


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """A scripted orchestrator on 127.0.0.1 (see tests/peer.py)."""
    scripted = Peer()
    async with websockets.serve(scripted.handler, "127.0.0.1", 0) as server:
        scripted.server = server
        scripted.port = server.sockets[0].getsockname()[1]
        yield scripted


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per client transport (the client, and subprocesses such as the demo,
    take it from MODEL_RUNNER_TRANSPORT)."""
    monkeypatch.setenv("MODEL_RUNNER_TRANSPORT", request.param)
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked transport_independent, in a module that runs per transport, runs once."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("transport") if callspec is not None else None
        independent = item.get_closest_marker("transport_independent") is not None
        (drop if independent and param not in (None, TRANSPORTS[0]) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
