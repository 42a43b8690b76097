"""Latency and throughput of a no-op model method through our model host, against a bare
grpclib server answering the same RPC with a constant and, with --old-host-python, the host
production runs today (crunch-model-runner 0.4.2, grpcio) serving the same submission, in the
same run.

    python -m benchmarks.server_overhead [--calls 3000] [--concurrency 8] [--rounds 3]
        [--old-host-python <venv with crunch-model-runner==0.4.2>/bin/python]

Targets: our median latency within 1.25x of the bare server's (issue 2); the host's HTTP/2
defences (issue 14) cost nothing measurable against crunch-model-runner.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from grpclib.client import Channel

from benchmarks._common import (
    BENCH,
    EXAMPLES,
    median,
    percentile,
    start_script,
    table,
)
from model_runner.process import ModelHostProcess, free_port, host_environment, start_listening
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
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--calls", type=int, default=3000,
                        help="sequential calls per round for the latency (default 3000)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="concurrent callers for the throughput (default 8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the best of them is shown (default 3)")
    parser.add_argument("--old-host-python", default=os.environ.get("OLD_HOST_PYTHON"),
                        help="the Python of a venv with crunch-model-runner==0.4.2 installed, "
                             "to measure it in the same run (env OLD_HOST_PYTHON)")
    options = parser.parse_args()

    bare_proc, bare_port = start_script("bare_server.py")
    noop = BENCH / "submissions" / "noop"
    ours = ModelHostProcess(noop, ["--log-level", "WARNING"], python_path=[EXAMPLES])
    ours.start()
    old = None
    try:
        targets = [("bare grpclib (constant)", bare_port, "predict"),
                   ("model host, def method", ours.port, "predict"),
                   ("model host, async def method", ours.port, "apredict")]
        if options.old_host_python:
            old_port = free_port()
            # Run from the submission folder: our checkout's model_runner must not shadow its.
            old = start_listening([options.old_host_python, "-m", "model_runner.server",
                                   "--code-directory", str(noop), "--address",
                                   f"127.0.0.1:{old_port}", "--log-level", "warning"],
                                  old_port, env=host_environment([EXAMPLES]), cwd=noop)
            targets.append(("crunch-model-runner 0.4.2, def", old_port, "predict"))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in targets}
        for _ in range(options.rounds):  # interleaved, so machine noise hits all alike
            for name, port, method in targets:
                results[name].append(asyncio.run(
                    measure(port, method, options.calls, options.concurrency)))
    finally:
        bare_proc.kill()
        ours.stop()
        if old is not None:
            old.kill()

    def best(name: str, key: str) -> float:
        values = [r[key] for r in results[name]]
        return max(values) if key == "throughput" else min(values)

    base = best("bare grpclib (constant)", "median")
    old_name = "crunch-model-runner 0.4.2, def"
    headers = ["server", "median µs", "p99 µs", "calls/s", "median vs bare"]
    if old_name in results:
        headers.append("median vs 0.4.2")
    rows = [[name, best(name, "median"), best(name, "p99"), best(name, "throughput"),
             best(name, "median") / base,
             *([best(name, "median") / best(old_name, "median")] if old_name in results
               else [])] for name, _, _ in targets]
    print(f"{options.calls} sequential calls per round for latency, {options.concurrency} "
          f"concurrent callers for throughput; best of {options.rounds} interleaved rounds")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
