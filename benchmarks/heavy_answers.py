"""A tick whose answers weigh: N models each answering ~M MiB of the costliest JSON (nested
small lists) shortly before the deadline. How long `call()` takes against its timeout, the
verdicts, and what reading every output costs afterwards; with --baseline-python, the same with
another installation of this project in the same run (e.g. a venv with an earlier commit).

    python -m benchmarks.heavy_answers [--models 100] [--mib 4] [--timeout 1.0] [--delay 0.6]
        [--transport ngh2] [--baseline-python PATH]

Target (issue 14): `call()` within 1.3x the timeout, every verdict the model's own (SUCCESS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks._common import ROOT, start_script, table
from model_runner.process import host_environment

DRIVER = """
import asyncio, gc, json, sys, time
from model_runner_client import ModelEndpoint, ModelRunnerClient

async def main(port, models, timeout, transport):
    endpoints = [ModelEndpoint(f"m{i}", "127.0.0.1", port, "d") for i in range(models)]
    client = ModelRunnerClient.from_addresses(
        endpoints, base_classname="x.y.Base", timeout=timeout, transport=transport,
        max_receive_message_length=64 * 1024 * 1024, max_consecutive_timeouts=1000,
        max_consecutive_failures=1000)
    async with client:
        await client.wait_for_models(models, timeout=60)
        rows = []
        for _ in range(3):
            started = time.monotonic()
            results = await client.call("predict")
            elapsed = time.monotonic() - started
            read_started = time.monotonic()
            sizes = [len(r.output) for r in results if r.status == "SUCCESS"]
            rows.append({"call_s": elapsed, "read_s": time.monotonic() - read_started,
                         "counts": {k.value: v for k, v in results.counts().items()},
                         "rows": sum(sizes)})
            # Millions of decoded objects kept alive make every later GC pass take seconds,
            # inside the next tick: a coordinator stores what it needs, not the raw outputs.
            del results, sizes
            gc.collect()
    print(json.dumps(rows))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
"""


def drive(python: str, port: int, options: argparse.Namespace) -> list[dict[str, object]]:
    result = subprocess.run([python, "-c", DRIVER, str(port), str(options.models),
                             str(options.timeout), options.transport], capture_output=True,
                            text=True, timeout=600, env=host_environment([]), cwd="/")
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    rows: list[dict[str, object]] = json.loads(result.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--models", type=int, default=100, help="models called (default 100)")
    parser.add_argument("--mib", type=float, default=4.0, help="MiB of JSON each answers "
                        "(default 4, the client's default answer limit)")
    parser.add_argument("--timeout", type=float, default=1.0, help="the call's timeout (1.0)")
    parser.add_argument("--delay", type=float, default=0.6, help="seconds before each answer "
                        "is sent (default 0.6: its bytes arrive before the deadline)")
    parser.add_argument("--transport", default="ngh2", help="ngh2 or grpclib (default ngh2)")
    parser.add_argument("--baseline-python", default=None,
                        help="the Python of a venv with another version of this project")
    options = parser.parse_args()
    server, port = start_script("fast_server.py", "--delay", str(options.delay), "--json-mib",
                                str(options.mib))
    try:
        table_rows = []
        for name, python in [("this tree", sys.executable),
                             *([("baseline", options.baseline_python)]
                               if options.baseline_python else [])]:
            for tick, row in enumerate(drive(python, port, options)):
                call_s = float(row["call_s"])  # type: ignore[arg-type]
                table_rows.append([name, tick + 1, call_s, call_s / options.timeout,
                                   float(row["read_s"]),  # type: ignore[arg-type]
                                   json.dumps(row["counts"])])
    finally:
        server.kill()
    print(f"{options.models} models x ~{options.mib:g} MiB of nested JSON, answered after "
          f"{options.delay:g} s, timeout {options.timeout:g} s, {options.transport}, "
          f"{os.cpu_count()} cores")
    print(table(["client", "tick", "call() s", "x timeout", "reading outputs s", "verdicts"],
                table_rows))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
