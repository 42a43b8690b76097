"""A hung model costs one tick, not a round (issue 20): crunch-node's tournament mode calls every
model once per sample, one sample after another, so a host that queued calls behind a call nobody
waits for held every tick of the round to its deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from model_runner_client import CallStatus
from tests.clients import address_client, endpoint
from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]

HUNG_MODES = ["sleep", "spin", "await", "async_spin"]
TIMEOUT = 1.0
TICKS = 30


@pytest.fixture(scope="module")
def honest_hosts() -> Iterator[list[HostProcess]]:
    hosts = [HostProcess(SUBMISSIONS / "good_tracker").start() for _ in range(2)]
    yield hosts
    for host in hosts:
        host.stop()


def held(durations: list[float]) -> int:
    """Ticks that waited (most of) their deadline."""
    return sum(1 for d in durations if d > 0.8 * TIMEOUT)


@pytest.mark.parametrize("mode", HUNG_MODES)
async def test_a_hung_model_holds_at_most_one_tick_of_a_round(
        honest_hosts: list[HostProcess], mode: str) -> None:
    hung = HostProcess(TEST_SUBMISSIONS / "hung", env={"HUNG_MODE": mode}).start()
    try:
        models = [endpoint(host, f"honest{i}") for i, host in enumerate(honest_hosts)]
        models.append(endpoint(hung, "hung"))
        async with address_client(models, timeout=TIMEOUT,
                                  max_consecutive_timeouts=100) as client:
            await client.wait_for_models(3, timeout=20)
            durations, details = [], []
            for _ in range(TICKS):
                await client.call("tick", {"BTC": 1.0})
                started = time.monotonic()
                results = await client.call("predict", "BTC", 2)
                durations.append(time.monotonic() - started)
                for i in range(len(honest_hosts)):
                    assert results[f"honest{i}"].status is CallStatus.SUCCESS
                assert results["hung"].status is CallStatus.TIMEOUT
                details.append(results["hung"].detail)
        assert held(durations) <= 1, durations
        # After the first, the host says at once what the model is still running.
        busy = [d for d in details if "the model is still running predict" in d]
        assert len(busy) >= TICKS // 2, details
        assert "still running an earlier call" in busy[0]
    finally:
        hung.stop()
