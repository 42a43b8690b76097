"""Latency and throughput of a no-op model method through our model host, against a bare
grpclib server answering the same RPC with a constant, in the same run.

    python benchmarks/server_overhead.py [--calls 3000] [--concurrency 8] [--rounds 3]

Target (issue 2): our median latency within 1.25x of the bare server's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from grpclib.client import Channel

from benchmarks._common import BENCH, EXAMPLES, median, percentile, start_script, table
from model_runner.process import ModelHostProcess
from model_runner.wire import (
    Argument,
    CallRequest,
    DynamicSubclassServiceStub,
    SetupRequest,
    encode_value,
)


def request(method: str) -> CallRequest:
    return CallRequest(method_name=method, method_arguments=[
        Argument(position=0, data=encode_value("BTC")),
        Argument(position=1, data=encode_value(60))])


async def measure(port: int, method: str, calls: int, concurrency: int) -> dict[str, Any]:
    async with Channel("127.0.0.1", port) as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.setup(SetupRequest(class_name="starter_challenge.tracker.TrackerBase"))
        message = request(method)
        for _ in range(200):  # warm up
            await stub.call(message)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            response = await stub.call(message)
            latencies.append(time.perf_counter() - started)
            assert response.status is not None and response.status.code == "SUCCESS"

        async def worker(n: int) -> None:
            for _ in range(n):
                await stub.call(message)

        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        throughput = (calls // concurrency * concurrency) / (time.perf_counter() - started)
    return {"median": median(latencies) * 1e6, "p99": percentile(latencies, 0.99) * 1e6,
            "throughput": throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    bare_proc, bare_port = start_script("bare_server.py")
    ours = ModelHostProcess(BENCH / "submissions" / "noop", ["--log-level", "WARNING"],
                            python_path=[EXAMPLES])
    ours.start()
    try:
        targets = [("bare grpclib (constant)", bare_port, "predict"),
                   ("model host, def method", ours.port, "predict"),
                   ("model host, async def method", ours.port, "apredict")]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in targets}
        for _ in range(options.rounds):  # interleaved, so machine noise hits all alike
            for name, port, method in targets:
                results[name].append(asyncio.run(
                    measure(port, method, options.calls, options.concurrency)))
    finally:
        bare_proc.kill()
        ours.stop()

    def best(name: str, key: str) -> float:
        values = [r[key] for r in results[name]]
        return max(values) if key == "throughput" else min(values)

    base = best("bare grpclib (constant)", "median")
    rows = [[name, best(name, "median"), best(name, "p99"), best(name, "throughput"),
             best(name, "median") / base] for name, _, _ in targets]
    print(f"{options.calls} sequential calls per round for latency, {options.concurrency} "
          f"concurrent callers for throughput; best of {options.rounds} interleaved rounds")
    print(table(["server", "median µs", "p99 µs", "calls/s", "median vs bare"], rows))


if __name__ == "__main__":
    main()
