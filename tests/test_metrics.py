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
        for _ in range(3):
            await client.call("predict", "BTC", 1)
        await until(lambda: bool(reports))
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
