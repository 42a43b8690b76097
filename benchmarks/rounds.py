"""Tournament rounds, as crunch-node's tournament mode plays them (issue 20): S sequential ticks
(one per sample) to M models, without and with one hung model among them, each pair of client
and host in the same run: ours, model-runner-client 0.14 (the grpcio client) and
crunch-model-runner 0.4.2 (the deployed host), in their own venvs, and the mixed pairs. Then
the host's cost per call, driven by h2load (benchmarks/host_cost.py).

    python -m benchmarks.rounds
        --old-client-python <venv with model-runner-client==0.14.0>/bin/python
        --old-host-python <venv with crunch-model-runner==0.4.2>/bin/python
        [--ticks 1000] [--models 5 50] [--timeout 1.0] [--no-host-cost]

Each model has a host of its own (the deployed host answers a second concurrent call "Server
busy", so models cannot share one). The hung model's `predict` sleeps for good
(tests/submissions/hung). A tick is held when it lasts over 0.8x the timeout.

Targets: without a hung model, our pair's round at most 0.8x the incumbent pair's; with one, at
most one tick held and the round within one timeout of the honest round, on every pair that
includes one of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks._common import BENCH, EXAMPLES, ROOT, percentile, table
from benchmarks.host_cost import host_cost
from model_runner.process import ModelHostProcess, free_port, host_environment, start_listening

NOOP = BENCH / "submissions" / "noop"
HUNG = ROOT / "tests" / "submissions" / "hung"


@contextmanager
def our_hosts(code: Path, count: int) -> Iterator[list[int]]:
    hosts = [ModelHostProcess(code, ["--log-level", "WARNING"], python_path=[EXAMPLES],
                              env={"HUNG_MODE": "sleep"}) for _ in range(count)]
    try:
        for host in hosts:
            host.spawn()
        for host in hosts:
            host.start()
        yield [int(host.port or 0) for host in hosts]
    finally:
        for host in hosts:
            host.kill()


@contextmanager
def old_hosts(python: str, code: Path, count: int) -> Iterator[list[int]]:
    processes, ports = [], []
    env = {**host_environment([EXAMPLES]), "HUNG_MODE": "sleep"}
    try:
        for _ in range(count):
            port = free_port()
            # Run from the submission folder: our checkout's model_runner must not shadow its.
            processes.append(start_listening(
                [python, "-m", "model_runner.server", "--code-directory", str(code),
                 "--address", f"127.0.0.1:{port}", "--log-level", "warning"],
                port, env=env, cwd=code))
            ports.append(port)
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()


def play(client_python: str, ticks: int, timeout: float, ports: list[int]) -> dict[str, Any]:
    result = subprocess.run([client_python, str(BENCH / "rounds_driver.py"), str(ticks),
                             str(timeout), *map(str, ports)],
                            capture_output=True, text=True, timeout=3600, cwd=BENCH)
    if result.returncode != 0:
        raise RuntimeError(f"the round's driver failed:\n{result.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def row(record: dict[str, Any], records: list[dict[str, Any]], timeout: float) -> list[object]:
    """One table row: the round, and how it compares with the incumbent pair's honest round
    and with the same pair's honest round."""
    def honest(client: str, host: str) -> float:
        return float(next(sum(r["durations"]) for r in records if r["models"] == record["models"]
                          and not r["hung"] and r["client"] == client and r["host"] == host))

    durations = record["durations"]
    round_time = sum(durations)
    return [record["models"], "yes" if record["hung"] else "no", record["client"],
            record["host"], round_time, sum(1 for d in durations if d > 0.8 * timeout),
            percentile(durations, 0.5) * 1e3, percentile(durations, 0.99) * 1e3,
            min(record["answered"]), round_time / honest("0.14", "0.4.2"),
            round_time - honest(record["client"], record["host"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--old-client-python", default=os.environ.get("OLD_CLIENT_PYTHON"),
                        required="OLD_CLIENT_PYTHON" not in os.environ,
                        help="a venv's Python with model-runner-client==0.14.0")
    parser.add_argument("--old-host-python", default=os.environ.get("OLD_HOST_PYTHON"),
                        required="OLD_HOST_PYTHON" not in os.environ,
                        help="a venv's Python with crunch-model-runner==0.4.2")
    parser.add_argument("--ticks", type=int, default=1000, help="ticks a round (default 1000)")
    parser.add_argument("--models", type=int, nargs="+", default=[5, 50],
                        help="models a round, the hung one included (default 5 50)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds (default 1.0)")
    parser.add_argument("--no-host-cost", action="store_true",
                        help="leave out the h2load figures of benchmarks/host_cost.py")
    options = parser.parse_args()
    clients = {"ours": sys.executable, "0.14": options.old_client_python}
    records: list[dict[str, Any]] = []
    for count in options.models:
        with ExitStack() as stack:
            hosts = {"ours": stack.enter_context(our_hosts(NOOP, count)),
                     "0.4.2": stack.enter_context(old_hosts(options.old_host_python, NOOP,
                                                            count))}
            for with_hung in (False, True):
                for client, python in clients.items():
                    for host in ("ours", "0.4.2"):
                        with ExitStack() as hung_stack:
                            # A fresh hung host each round: one a previous round left stuck
                            # answers busy from the first call, and holds no tick at all.
                            ports = hosts[host]
                            if with_hung:
                                hung = (our_hosts(HUNG, 1) if host == "ours"
                                        else old_hosts(options.old_host_python, HUNG, 1))
                                ports = ports[:count - 1] + hung_stack.enter_context(hung)
                            run = play(python, options.ticks, options.timeout, ports)
                        records.append({"models": count, "hung": with_hung, "client": client,
                                        "host": host, **run})
                        print(count, with_hung, client, host, sum(run["durations"]),
                              file=sys.stderr, flush=True)
    rows = [row(record, records, options.timeout) for record in records]
    print(f"{options.ticks} sequential ticks a round (predict to every model), timeout "
          f"{options.timeout} s; the hung model's predict never returns")
    print(table(["models", "hung", "client", "host", "round s", "ticks held", "p50 ms",
                 "p99 ms", "fewest SUCCESS a tick", "round vs 0.14+0.4.2 honest",
                 "s over its honest round"], rows))
    if not options.no_host_cost and shutil.which("h2load"):
        headers, cost_rows = host_cost(20000, 3, options.old_host_python)
        print("\nThe host's cost per call: 20000 sequential no-op Calls, driven by h2load")
        print(table(headers, cost_rows))


if __name__ == "__main__":
    main()
