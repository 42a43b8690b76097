"""Drive the existing grpcio-based `model-runner-client` (run with the Python of the venv that
has it installed; its import name is the same as ours). Prints one JSON line: tick times, CPU
per call, peak RSS.

    OLD_PYTHON benchmarks/old_client_driver.py N TICKS TIMEOUT PORT [PORT ...]

Models are added to its cluster directly (no orchestrator), as its websocket handler would.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout_common import BASE, PAYLOAD, measure_rusage, raise_file_limit

from model_runner_client.grpc.generated.commons_pb2 import (
    Argument,
    Variant,
    VariantType,
)
from model_runner_client.model_concurrent_runners.dynamic_subclass_model_concurrent_runner import (
    DynamicSubclassModelConcurrentRunner,
)


async def main(count: int, ticks: int, timeout: float, ports: list[int]) -> None:
    runner = DynamicSubclassModelConcurrentRunner(timeout, "bench", "127.0.0.1", 9091, BASE,
                                                  report_failure=False)
    cluster = runner.model_cluster
    await asyncio.gather(*(cluster.add_model_runner(runner.create_model_runner(
        deployment_id="d", model_id=f"m{i}", model_name=f"m{i}", ip="127.0.0.1",
        port=ports[i % len(ports)], infos={})) for i in range(count)))
    args = [Argument(position=0, data=Variant(type=VariantType.JSON, value=PAYLOAD))]
    times = []
    cpu = 0.0
    ok = 0
    for tick in range(ticks + 2):
        cpu_before, started = time.process_time(), time.perf_counter()
        results = await runner.call("predict", (args, []))
        elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu_before
        if tick >= 2:  # warm-up ticks are not counted
            times.append(elapsed)
            cpu += cpu_used
        ok = sum(1 for r in results.values() if r.status.value == "SUCCESS")
    print(json.dumps({"times": times, "ok": ok, "models": len(cluster.models_run),
                      "cpu_per_call_us": cpu / (ticks * count) * 1e6, **measure_rusage()}))
    for model in list(cluster.models_run.values()):
        await model.close()


if __name__ == "__main__":
    raise_file_limit()
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                     [int(p) for p in sys.argv[4:]]))
