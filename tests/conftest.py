from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess

settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("default")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib is asyncio-only


@pytest.fixture(scope="module")
def toolbox_host() -> Iterator[HostProcess]:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def good_host() -> Iterator[HostProcess]:
    host = HostProcess(SUBMISSIONS / "good_tracker").start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def raising_host() -> Iterator[HostProcess]:
    host = HostProcess(SUBMISSIONS / "raising_tracker").start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def bad_host() -> Iterator[HostProcess]:
    host = HostProcess(SUBMISSIONS / "no_subclass").start()
    yield host
    host.stop()
