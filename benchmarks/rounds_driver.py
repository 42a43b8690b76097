"""One tournament round, as crunch-node's tournament mode plays it: every model called once per
sample, one sample after another. Run with the Python of the venv whose client is measured: ours
(`ModelRunnerClient`) or model-runner-client 0.14 (the grpcio client; same import name, its old
API). Prints one JSON line: each tick's duration, and how many models answered SUCCESS in each.

    PYTHON benchmarks/rounds_driver.py TICKS TIMEOUT PORT [PORT ...]

Each port is one model's host; models are added directly (no orchestrator), as the orchestrator
link would add them.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout_common import BASE, raise_file_limit

# Warm-up ticks call `tick`, which the hung model answers too: its first `predict`, and the
# tick it holds, fall inside the measured round.
WARM_UP = 3


async def ours(ticks: int, timeout: float, ports: list[int]) -> dict[str, list[float]]:
    from model_runner_client import ModelRunnerClient

    addresses = [f"127.0.0.1:{port}" for port in ports]
    # The policy is crunch-node's: max_consecutive_timeouts=100.
    async with ModelRunnerClient.from_addresses(addresses, base_classname=BASE, timeout=timeout,
                                                max_consecutive_timeouts=100) as client:
        await client.wait_for_models(len(ports), timeout=60)
        for _ in range(WARM_UP):
            await client.call("tick", {"BTC": 1.0})
        durations, answered = [], []
        for _ in range(ticks):
            started = time.perf_counter()
            results = await client.call("predict", "BTC", 60)
            durations.append(time.perf_counter() - started)
            answered.append(sum(1 for r in results if r.status.value == "SUCCESS"))
    return {"durations": durations, "answered": answered}


async def old(ticks: int, timeout: float, ports: list[int]) -> dict[str, list[float]]:
    from model_runner_client.grpc.generated.commons_pb2 import Argument, Variant, VariantType
    from model_runner_client.model_concurrent_runners.dynamic_subclass_model_concurrent_runner import (  # noqa: E501
        DynamicSubclassModelConcurrentRunner,
    )
    from model_runner_client.utils.datatype_transformer import encode_data

    runner = DynamicSubclassModelConcurrentRunner(timeout, "bench", "127.0.0.1", 9091, BASE,
                                                  report_failure=False)
    cluster = runner.model_cluster
    await asyncio.gather(*(cluster.add_model_runner(runner.create_model_runner(
        deployment_id="d", model_id=f"m{i}", model_name=f"m{i}", ip="127.0.0.1", port=port,
        infos={})) for i, port in enumerate(ports)))
    args = [Argument(position=1, data=Variant(type=VariantType.STRING,
                                              value=encode_data(VariantType.STRING, "BTC"))),
            Argument(position=2, data=Variant(type=VariantType.INT,
                                              value=encode_data(VariantType.INT, 60)))]
    data = Variant(type=VariantType.JSON, value=encode_data(VariantType.JSON, {"BTC": 1.0}))
    for _ in range(WARM_UP):
        await runner.call("tick", ([Argument(position=1, data=data)], []))
    durations, answered = [], []
    for _ in range(ticks):
        started = time.perf_counter()
        results = await runner.call("predict", (args, []))
        durations.append(time.perf_counter() - started)
        answered.append(sum(1 for r in results.values() if r.status.value == "SUCCESS"))
    for model in list(cluster.models_run.values()):
        await model.close()
    return {"durations": durations, "answered": answered}


def main() -> None:
    raise_file_limit()
    ticks, timeout, ports = int(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    try:
        from model_runner_client import ModelRunnerClient  # noqa: F401
        drive = ours
    except ImportError:
        drive = old
    print(json.dumps(asyncio.run(drive(ticks, timeout, ports))), flush=True)


if __name__ == "__main__":
    main()
