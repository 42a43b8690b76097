"""The client's Prometheus metrics, read back from a running client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from model_runner_client import EventKind, FailureReport, ModelEvent, ModelRunnerClient
from model_runner_client.metrics import PrometheusMetrics
from tests.clients import ScriptedSource, address_client, endpoint
from tests.hosts import BASE, TEST_SUBMISSIONS, HostProcess, until

pytestmark = pytest.mark.anyio


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported:\n{text}")


async def test_a_running_client_exports_what_a_coordinator_watches(
        good_host: HostProcess, raising_host: HostProcess) -> None:
    registry = CollectorRegistry()
    reports: list[FailureReport] = []
    client = address_client(
        [endpoint(good_host, "good"), endpoint(raising_host, "raising")],
        timeout=5.0, max_consecutive_failures=2,
        metrics=PrometheusMetrics(registry), on_failure=reports.append)
    async with client:
        await client.wait_for_models(2, timeout=20)
        text = generate_latest(registry).decode()
        assert value(text, 'model_runner_client_models{state="ready"}') == 2
        await client.call("predict", "BTC", 1)
        latency_of_raising = ('model_runner_client_call_latency_seconds_count{method="predict",'
                              'model_id="raising"} 1.0')
        assert latency_of_raising in generate_latest(registry).decode()  # failures have latency
        for _ in range(2):
            await client.call("predict", "BTC", 1)
        await until(lambda: bool(reports))
        # It left: its latency series is dropped (months of churn keep them bounded by the
        # models held).
        await until(lambda: 'model_id="raising"' not in generate_latest(registry).decode())
        text = generate_latest(registry).decode()
    prefix = "model_runner_client"
    assert value(text, f'{prefix}_calls_total{{kind="success",method="predict",'
                       'status="SUCCESS"}') == 3
    assert value(text, f'{prefix}_calls_total{{kind="model failure",method="predict",'
                       'status="FAILURE"}') == 2
    assert value(text, f'{prefix}_reports_total{{code="MULTIPLE_FAILED"}}') == 1
    assert value(text, f'{prefix}_tick_seconds_count{{method="predict"}}') == 3
    assert value(text, f'{prefix}_call_latency_seconds_count{{method="predict",'
                       'model_id="good"}') == 3
    assert value(text, f'{prefix}_models{{state="ready"}}') == 1  # raising was disconnected


async def test_a_model_removed_during_a_tick_keeps_no_series(toolbox_host: HostProcess,
                                                             tmp_path: Path) -> None:
    """A model removed after it answered, while the tick waits for another: its LEFT is
    dispatched before the tick records its latency, so the tick forgets it too (or its series
    would stay for good)."""
    import sys

    from model_runner import HostConfig, ModelHost
    from tests.hosts import EXAMPLES

    # The quick model's host runs in this process, so the test sees when it has written its
    # answer (`service.in_flight` drops once the trailers are written).
    sys.path.insert(0, str(EXAMPLES))
    quick = ModelHost(HostConfig(TEST_SUBMISSIONS / "toolbox", host="127.0.0.1", port=0))
    await quick.start()
    try:
        registry = CollectorRegistry()
        events: list[ModelEvent] = []
        assert quick.port is not None
        source = ScriptedSource([endpoint(quick.port, "quick"), endpoint(toolbox_host, "slow")])
        client = ModelRunnerClient(source=source, base_classname=BASE, timeout=10.0,
                                   metrics=PrometheusMetrics(registry), on_event=events.append)
        async with client:
            await client.wait_for_models(2, timeout=20)
            mark = tmp_path / "quick-called"
            tick = asyncio.ensure_future(client.call(
                "sleep", per_model=lambda m: (([0.0], {"mark": str(mark)})
                                              if m.model_id == "quick" else ([1.5], None))))
            await until(mark.exists)  # the quick model is answering
            await until(lambda: quick.service.in_flight == 0)  # its answer is written
            # On loopback the bytes are already at the client, whose protocol (on this loop)
            # reads them at the loop's next poll: one yield, before the removal is queued.
            await asyncio.sleep(0)
            source.registry.remove("quick", "the test removes it")
            await until(lambda: any(e.kind is EventKind.LEFT for e in events))
            assert not tick.done()  # the LEFT came during the tick, as this test needs
            results = await tick
            assert results["quick"].ok, results["quick"]  # answered before it was removed
            assert results["slow"].ok
            text = generate_latest(registry).decode()
            assert 'model_id="slow"' in text
            assert 'model_id="quick"' not in text, text
    finally:
        await quick.drain(0)
        sys.path.remove(str(EXAMPLES))
