"""One fan-out measurement of our client in a process of its own (so its CPU and peak RSS are
its alone). Prints one JSON line: tick times, CPU per call, peak RSS.

    python benchmarks/fanout_driver.py --n 1000 --ticks 10 --transport ngh2 [--uvloop]
        [--timeout 30] [--hang-port PORT] PORT [PORT ...]

With --hang-port, every tenth model is at that port (a server that never answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from benchmarks.fanout_common import ARGUMENT, BASE, measure_rusage, raise_file_limit
from model_runner_client import CallStatus, ModelEndpoint, ModelRunnerClient


async def run(options: argparse.Namespace) -> dict[str, object]:
    ports = options.ports
    endpoints = [ModelEndpoint(f"m{i}", "127.0.0.1",
                               options.hang_port if options.hang_port and i % 10 == 0
                               else ports[i % len(ports)], "d")
                 for i in range(options.n)]
    async with ModelRunnerClient.from_addresses(
            endpoints, base_classname=BASE, timeout=options.timeout,
            transport=options.transport, max_consecutive_timeouts=1000,
            max_concurrent_calls=max(1000, options.n)) as client:
        await client.wait_for_models(options.n, timeout=600)
        times = []
        cpu = 0.0
        ok = 0
        for tick in range(options.ticks + 2):
            cpu_before, started = time.process_time(), time.perf_counter()
            results = await client.call("predict", ARGUMENT)
            elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu_before
            if tick >= 2:  # warm-up ticks are not counted
                times.append(elapsed)
                cpu += cpu_used
            ok = results.counts()[CallStatus.SUCCESS]
            if options.hang_port:
                # Hanging models would cool down (skip calls) after a timeout: measure every
                # tick with them called, as a fresh client would.
                client.forgive()
    return {"times": times, "ok": ok, "cpu_per_call_us": cpu / (options.ticks * options.n) * 1e6,
            **measure_rusage()}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--transport", default="ngh2")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--hang-port", type=int, default=0)
    options = parser.parse_args()
    raise_file_limit()
    if options.uvloop:
        import uvloop
        report = uvloop.run(run(options))
    else:
        report = asyncio.run(run(options))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
