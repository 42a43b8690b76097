"""The client's Prometheus metrics, read back from a running client."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from model_runner_client import FailureReport
from model_runner_client.metrics import PrometheusMetrics
from tests.clients import address_client, endpoint
from tests.hosts import HostProcess, until

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
