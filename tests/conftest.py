from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess

settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("default")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib is asyncio-only


def _module_host(code_directory: Path) -> Any:
    """A model host serving `code_directory`, shared by the tests of a module."""

    @pytest.fixture(scope="module")
    def host() -> Iterator[HostProcess]:
        process = HostProcess(code_directory).start()
        yield process
        process.stop()

    return host


toolbox_host = _module_host(TEST_SUBMISSIONS / "toolbox")
good_host = _module_host(SUBMISSIONS / "good_tracker")
raising_host = _module_host(SUBMISSIONS / "raising_tracker")
bad_host = _module_host(SUBMISSIONS / "no_subclass")
