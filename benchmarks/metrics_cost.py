"""What recording metrics costs a tick: the same fan-out with and without
`metrics=PrometheusMetrics()`, interleaved in one process, against a bare ngh2 server.

    python -m benchmarks.metrics_cost [--models 1000] [--ticks 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchmarks._common import start_script, table
from benchmarks.fanout_common import raise_file_limit
from model_runner_client import ModelEndpoint, ModelRunnerClient


async def measure(port: int, models: int, ticks: int, metrics: bool) -> float:
    """CPU microseconds per call."""
    options: dict[str, object] = {}
    if metrics:
        from prometheus_client import CollectorRegistry

        from model_runner_client.metrics import PrometheusMetrics
        options["metrics"] = PrometheusMetrics(CollectorRegistry())
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint(f"m{i}", "127.0.0.1", port, "d") for i in range(models)],
        base_classname="x.y.Base", timeout=30.0, **options)  # type: ignore[arg-type]
    async with client:
        await client.wait_for_models(models, timeout=120)
        for _ in range(3):  # warm-up
            await client.call("predict")
        cpu = time.process_time()
        for _ in range(ticks):
            await client.call("predict")
        return (time.process_time() - cpu) / (ticks * models) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--models", type=int, default=1000, help="models (default 1000)")
    parser.add_argument("--ticks", type=int, default=30, help="ticks per round (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    options = parser.parse_args()
    raise_file_limit()
    server, port = start_script("fast_server.py")
    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(options.rounds):
            for metrics in (False, True):
                results[metrics].append(asyncio.run(measure(port, options.models,
                                                            options.ticks, metrics)))
    finally:
        server.kill()
    base = statistics.median(results[False])
    rows = [[name, statistics.median(results[m]), min(results[m]), max(results[m]),
             statistics.median(results[m]) / base]
            for name, m in (("no metrics (default)", False), ("PrometheusMetrics", True))]
    print(f"{options.models} models, {options.ticks} ticks x {options.rounds} interleaved rounds")
    print(table(["client", "CPU µs/call (median)", "min", "max", "ratio"], rows))


if __name__ == "__main__":
    main()
