"""Tick time of one `predict` fanned out to N models: our client, a bare grpclib
`asyncio.gather` of the same calls, and the existing grpcio-based client when available; plus
a run with 10% of the models hanging. Same machine, same run, same servers.

    python benchmarks/fanout.py [--sizes 10 100 1000] [--servers 2] [--old-python PATH]

The targets are bare grpclib servers answering a constant (benchmarks/bare_server.py), so the
figures measure the client side. The existing client is run from another venv's Python
(`pip install model-runner-client` there; its import name is the same as ours); without
--old-python (or OLD_CLIENT_PYTHON) its rows are left out.

Targets (issue 3): ours faster than the bare gather at every N; at N=1000 no slower than the
grpcio-based client; with hanging models, tick time within 5% of the timeout.
Writes benchmarks/out/fanout.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from grpclib.client import Channel
from websockets.asyncio.server import ServerConnection, serve

from benchmarks._common import BENCH, OUT, median, percentile, start_script, table
from model_runner.wire import Argument, CallRequest, DynamicSubclassServiceStub, encode_value
from model_runner_client import CallStatus, ModelEndpoint, ModelRunnerClient
from model_runner_client.grpc.generated.commons_pb2 import Argument as Argument_pb2
from model_runner_client.grpc.generated.commons_pb2 import Variant as Variant_pb2
from model_runner_client.grpc.generated.commons_pb2 import VariantType as VariantType_pb2
from model_runner_client.model_concurrent_runners import (
    DynamicSubclassModelConcurrentRunner,
    ModelPredictResult,
)
from model_runner_client.utils.datatype_transformer import encode_data

BASE = "starter_challenge.tracker.TrackerBase"
ARGUMENT = {"asset": "BTC", "horizon": 60, "step": 5}


def ticks_for(n: int) -> int:
    return 20 if n <= 100 else 10


async def ours(ports: list[int], n: int, ticks: int, timeout: float = 30.0) -> list[float]:
    endpoints = [ModelEndpoint(f"m{i}", "127.0.0.1", ports[i % len(ports)], "d")
                 for i in range(n)]
    async with ModelRunnerClient.from_addresses(endpoints, base_classname=BASE,
                                                timeout=timeout) as client:
        await client.wait_for_models(n, timeout=120)
        times = []
        for tick in range(ticks + 2):
            started = time.perf_counter()
            results = await client.call("predict", ARGUMENT)
            if tick >= 2:
                times.append(time.perf_counter() - started)
        assert results.counts()[CallStatus.SUCCESS] == n, results
    return times


async def legacy(ports: list[int], n: int, ticks: int, timeout: float = 30.0) -> list[float]:
    """The same ticks through model-runner-client 0.14's API (our drop-in layer over the
    client), the models listed by a scripted orchestrator."""
    entries = [{"model_id": f"m{i}", "deployment_id": "d", "state": "RUNNING",
                "ip": "127.0.0.1", "port": ports[i % len(ports)], "infos": {}}
               for i in range(n)]

    async def orchestrator(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"event": "init", "data": entries}))
        await ws.wait_closed()

    async with serve(orchestrator, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with DynamicSubclassModelConcurrentRunner(timeout, "bench", "127.0.0.1", port,
                                                        BASE) as runner:
            argument = Argument_pb2(position=1, data=Variant_pb2(
                type=VariantType_pb2.JSON, value=encode_data(VariantType_pb2.JSON, ARGUMENT)))
            times = []
            for tick in range(ticks + 2):
                started = time.perf_counter()
                results = await runner.call("predict", ([argument], []))
                if tick >= 2:
                    times.append(time.perf_counter() - started)
            assert sum(r.status is ModelPredictResult.Status.SUCCESS
                       for r in results.values()) == n, results
    return times


async def bare(ports: list[int], n: int, ticks: int) -> list[float]:
    channels = [Channel("127.0.0.1", ports[i % len(ports)]) for i in range(n)]
    stubs = [DynamicSubclassServiceStub(c) for c in channels]
    request = CallRequest(method_name="predict",
                          method_arguments=[Argument(position=0, data=encode_value(ARGUMENT))])
    times = []
    try:
        for i in range(0, n, 100):  # connect in batches, as our client's Setup phase does
            await asyncio.gather(*(s.call(request, timeout=30) for s in stubs[i:i + 100]))
        for tick in range(ticks + 2):
            started = time.perf_counter()
            responses = await asyncio.gather(*(s.call(request, timeout=30) for s in stubs))
            if tick >= 2:
                times.append(time.perf_counter() - started)
        assert all(r.status is not None and r.status.code == "SUCCESS" for r in responses)
    finally:
        for channel in channels:
            channel.close()
    return times


def old_client(python: str, ports: list[int], n: int, ticks: int) -> list[float]:
    out = subprocess.run([python, str(BENCH / "old_client_driver.py"), str(n), str(ticks), "30",
                          *map(str, ports)], capture_output=True, text=True, timeout=900,
                         cwd="/", env={k: v for k, v in os.environ.items()
                                       if k != "PYTHONPATH"})
    if out.returncode != 0:
        raise RuntimeError(f"old client driver failed:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] == n, report
    return [float(t) for t in report["times"]]


async def with_hangers(ports: list[int], hang_port: int, n: int, timeout: float,
                       ticks: int) -> list[float]:
    """Tick times of the ticks in which the hanging models were actually called."""
    endpoints = [ModelEndpoint(f"m{i}", "127.0.0.1",
                               hang_port if i % 10 == 0 else ports[i % len(ports)], "d")
                 for i in range(n)]
    times = []
    # A fresh client per measured tick: the failure policy would otherwise skip or drop them.
    for _ in range(ticks):
        async with ModelRunnerClient.from_addresses(endpoints, base_classname=BASE,
                                                    timeout=timeout) as client:
            await client.wait_for_models(n, timeout=60)
            started = time.perf_counter()
            results = await client.call("predict", ARGUMENT)
            times.append(time.perf_counter() - started)
            assert results.counts()[CallStatus.TIMEOUT] == n // 10, results
    return times


def plot(rows: dict[str, dict[int, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, by_n in rows.items():
        sizes = sorted(by_n)
        ax.errorbar(sizes, [median(by_n[s]) * 1000 for s in sizes],
                    yerr=[[0] * len(sizes),
                          [(percentile(by_n[s], 0.9) - median(by_n[s])) * 1000 for s in sizes]],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("models (N)")
    ax.set_ylabel("tick time, ms (median, bar to p90)")
    ax.set_title("One predict fanned out to N models (2-core machine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--old-python", default=os.environ.get("OLD_CLIENT_PYTHON"))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per N, so machine noise hits every client alike")
    parser.add_argument("--hang-n", type=int, default=100)
    parser.add_argument("--hang-timeout", type=float, default=1.0)
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    servers = [start_script("bare_server.py") for _ in range(options.servers)]
    hang_server = start_script("bare_server.py", "--hang")
    ports = [port for _, port in servers]
    rows: dict[str, dict[int, list[float]]] = {"ours": {}, "ours, old API (drop-in)": {},
                                               "bare grpclib gather": {}}
    if options.old_python:
        rows["grpcio client (model-runner-client)"] = {}
    try:
        for n in options.sizes:
            ticks = ticks_for(n)
            for by_n in rows.values():
                by_n[n] = []
            for _ in range(options.rounds):
                rows["ours"][n] += asyncio.run(ours(ports, n, ticks))
                rows["ours, old API (drop-in)"][n] += asyncio.run(legacy(ports, n, ticks))
                rows["bare grpclib gather"][n] += asyncio.run(bare(ports, n, ticks))
                if options.old_python:
                    rows["grpcio client (model-runner-client)"][n] += old_client(
                        options.old_python, ports, n, ticks)
        hang_times = asyncio.run(with_hangers(ports, hang_server[1], options.hang_n,
                                              options.hang_timeout, 5))
    finally:
        for proc, _ in [*servers, hang_server]:
            proc.kill()

    table_rows = []
    for n in options.sizes:
        base = median(rows["bare grpclib gather"][n])
        for name, by_n in rows.items():
            table_rows.append([n, name, median(by_n[n]) * 1000, percentile(by_n[n], 0.9) * 1000,
                               median(by_n[n]) / base])
    print(f"tick = one predict to every model; {options.servers} bare grpclib servers on "
          f"127.0.0.1; {options.rounds} interleaved rounds; warm-up ticks excluded")
    print(table(["N", "client", "median ms", "p90 ms", "vs bare gather"], table_rows))
    print()
    print(f"{options.hang_n} models, 10% hanging forever, timeout {options.hang_timeout}s: "
          f"tick median {median(hang_times):.3f}s, max {max(hang_times):.3f}s "
          f"({median(hang_times) / options.hang_timeout:.3f}x the timeout)")
    plot(rows, OUT / "fanout.png")
    print(f"plot: {OUT / 'fanout.png'}")


if __name__ == "__main__":
    sys.exit(main())
