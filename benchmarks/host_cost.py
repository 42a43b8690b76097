"""What one call costs a model host, measured from outside by h2load (nghttp2's C HTTP/2 load
generator, so the figure is the host's and not a Python driver's), one call at a time over one
connection: our host (on uvloop at 127.0.0.1, and as docker/Dockerfile runs it: asyncio,
`[::]`); grpclib alone, answering raw bytes (the floor under any grpclib host);
grpclib with betterproto2, as a generated service; libnghttp2 (ngh2) alone, answering raw bytes
(what a host's HTTP/2 would cost on nghttp2); and, with --old-host-python,
crunch-model-runner 0.4.2, the deployed host (grpcio). Rounds are interleaved.

    python -m benchmarks.host_cost [--calls 3000] [--rounds 8] [--instructions]
        [--old-host-python <venv with crunch-model-runner==0.4.2>/bin/python]
        [--baseline-root <a checkout of this project at an earlier commit>]

Two measures:
- CPU seconds of the host process per call (user + system, /proc) and the latency h2load sees:
  the real cost, kernel and thread hand-offs included, but noisy on a shared VM (the same
  host's median moved by 30% between runs), so the best of the rounds is shown;
- with --instructions, the instructions the host executes per call, counted by valgrind's
  callgrind (`--instr-atstart=no`, switched on after a warm-up): repeatable to 0.1% whatever
  else the machine does, so what a change to our layer costs; it leaves out kernel time.

Needs `h2load` (`apt-get install nghttp2-client`), and valgrind for --instructions. Targets
(issue 20): our host's CPU per call and latency at most 1.0x crunch-model-runner's, and at most
1.15x a bare grpclib server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.client import Channel

from benchmarks._common import BENCH, EXAMPLES, ROOT, table
from model_runner.process import free_port, host_environment, start_listening
from model_runner.wire import (
    CALL_PATH,
    Argument,
    CallRequest,
    DynamicSubclassServiceStub,
    SetupRequest,
    encode_value,
)

NOOP = BENCH / "submissions" / "noop"
BASE_CLASS = "starter_challenge.tracker.TrackerBase"
FLOOR = "grpclib alone, raw bytes (the floor)"
NGH2_FLOOR = "libnghttp2 (ngh2) alone, raw bytes"
OLD = "crunch-model-runner 0.4.2"
IMAGED = "our host, def, as its image runs it (asyncio, [::])"


@dataclass
class Target:
    """A host to measure: how to start it on a port, and the method to call."""

    name: str
    argv: list[str]  # "{port}" stands for the port
    env: dict[str, str]
    cwd: Path | None = None
    method: str = "predict"
    results: list[dict[str, float]] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


def targets(old_host_python: str | None, baseline_root: Path | None,
            async_method: bool) -> list[Target]:
    def our_host(address: str = "127.0.0.1:{port}") -> list[str]:
        return [sys.executable, "-m", "model_runner", "--code-directory", str(NOOP),
                "--address", address, "--log-level", "WARNING"]

    def as_imaged(path: list[Path]) -> dict[str, str]:
        # docker/Dockerfile installs no uvloop and serves the deployed default `[::]`.
        return {**host_environment(path), "MODEL_RUNNER_UVLOOP": "0"}

    bare = [sys.executable, str(BENCH / "bare_server.py"), "{port}", "--uvloop"]
    chosen = [Target(FLOOR, [*bare, "--raw"], host_environment([EXAMPLES, ROOT])),
              Target("grpclib + betterproto2", bare, host_environment([EXAMPLES, ROOT])),
              Target(NGH2_FLOOR, [sys.executable, str(BENCH / "ngh2_floor_server.py"), "{port}"],
                     host_environment([EXAMPLES, ROOT]), cwd=ROOT),
              Target("our host, def", our_host(), host_environment([EXAMPLES]), cwd=ROOT),
              Target(IMAGED, our_host("[::]:{port}"), as_imaged([EXAMPLES]), cwd=ROOT)]
    if async_method:
        chosen.append(Target("our host, async def", our_host(), host_environment([EXAMPLES]),
                             cwd=ROOT, method="apredict"))
    if baseline_root is not None:
        # Started in that checkout: `python -m` puts the working folder first on the path.
        env = host_environment([baseline_root, EXAMPLES])
        chosen.append(Target(f"our host at {baseline_root}, def", our_host(), env,
                             cwd=baseline_root))
        chosen.append(Target(f"{IMAGED} at {baseline_root}", our_host("[::]:{port}"),
                             as_imaged([baseline_root, EXAMPLES]), cwd=baseline_root))
        if async_method:
            chosen.append(Target(f"our host at {baseline_root}, async def",
                                 our_host(), env, cwd=baseline_root, method="apredict"))
    if old_host_python:
        # Run from the submission folder: our checkout's model_runner must not shadow its.
        chosen.append(Target(OLD, [old_host_python, "-m", "model_runner.server",
                                   "--code-directory", str(NOOP), "--address",
                                   "127.0.0.1:{port}", "--log-level", "warning"],
                             host_environment([EXAMPLES]), cwd=NOOP))
    return chosen


def call_body(method: str) -> bytes:
    """A framed CallRequest for `method("BTC", 60)`, as every client sends it."""
    message = bytes(CallRequest(method_name=method, method_arguments=[
        Argument(position=0, data=encode_value("BTC")),
        Argument(position=1, data=encode_value(60))]))
    return b"\x00" + len(message).to_bytes(4, "big") + message


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def set_up(port: int) -> None:
    async with Channel("127.0.0.1", port) as channel:
        await DynamicSubclassServiceStub(channel).setup(SetupRequest(class_name=BASE_CLASS),
                                                        timeout=600)


def h2load(port: int, body: Path, calls: int, streams: int = 1) -> float:
    """Run h2load against one host: `calls` Calls on one connection, `streams` at a time;
    returns the seconds they took."""
    result = subprocess.run(
        ["h2load", "-n", str(calls), "-c", "1", "-m", str(streams), "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}{CALL_PATH}"],
        capture_output=True, text=True, check=True, timeout=3600)
    out = result.stdout
    finished = re.search(r"finished in ([\d.]+)(m?s)", out)
    succeeded = re.search(r"(\d+) succeeded", out)
    if finished is None or succeeded is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    if int(succeeded.group(1)) != calls:
        raise RuntimeError(f"h2load: only {succeeded.group(1)} of {calls} calls succeeded:\n{out}")
    return float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)


def start(target: Target, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = start_listening([*prefix, *target.command(port)], port, env=target.env,
                              cwd=target.cwd, timeout=600 if prefix else 30)
    if target.name != NGH2_FLOOR:  # it answers every request alike
        asyncio.run(set_up(port))
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure_cpu(chosen: list[Target], calls: int, rounds: int, folder: Path) -> None:
    running = [(t, *start(t)) for t in chosen]
    try:
        for _ in range(rounds):  # interleaved, so machine noise hits all alike
            for target, process, port in running:
                body = folder / f"{target.method}.bin"
                h2load(port, body, min(1000, calls))  # warm up
                before = cpu_seconds(process.pid)
                seconds = h2load(port, body, calls)
                target.results.append({"cpu_us": (cpu_seconds(process.pid) - before) / calls
                                       * 1e6, "latency_us": seconds / calls * 1e6})
    finally:
        for _, process, _ in running:
            stop(process)


def measure_instructions(target: Target, calls: int, folder: Path) -> float:
    """Instructions per call, counted by callgrind from the warm-up's end."""
    out = folder / f"callgrind.{free_port()}"
    process, port = start(target, ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                   f"--callgrind-out-file={out}"))
    try:
        body = folder / f"{target.method}.bin"
        h2load(port, body, 300)  # warm up: imports, caches, the first Setup
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True,
                       capture_output=True, timeout=60)
        h2load(port, body, calls)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True,
                       capture_output=True, timeout=60)
    finally:
        stop(process)
    for _ in range(100):  # written as the process exits
        if out.exists() and (totals := re.search(r"^totals: (\d+)", out.read_text(), re.M)):
            return int(totals.group(1)) / calls
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no totals for {target.name}")


def host_cost(calls: int, rounds: int, old_host_python: str | None, async_method: bool = False,
              baseline_root: Path | None = None, instructions: bool = False,
              ) -> tuple[list[str], list[list[object]]]:
    """The table of this benchmark: headers and rows (benchmarks/rounds.py prints it too)."""
    chosen = targets(old_host_python, baseline_root, async_method)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for method in {t.method for t in chosen}:
            (folder / f"{method}.bin").write_bytes(call_body(method))
        measure_cpu(chosen, calls, rounds, folder)
        counted = {t.name: measure_instructions(t, min(calls, 1000), folder)
                   for t in chosen} if instructions else {}

    def best(target: Target, key: str) -> float:
        # The best round: on this shared VM noise only ever adds.
        return min(r[key] for r in target.results)

    floor = chosen[0]
    old = next((t for t in chosen if t.name == OLD), None)
    headers = ["host", "CPU µs/call", "latency µs", "CPU vs floor", "latency vs floor"]
    if old is not None:
        headers += ["CPU vs 0.4.2", "latency vs 0.4.2"]
    if counted:
        headers += ["instructions/call", "instructions vs floor"]
    rows: list[list[object]] = []
    for target in chosen:
        cpu, latency = best(target, "cpu_us"), best(target, "latency_us")
        row: list[object] = [target.name, cpu, latency, cpu / best(floor, "cpu_us"),
                             latency / best(floor, "latency_us")]
        if old is not None:
            row += [cpu / best(old, "cpu_us"), latency / best(old, "latency_us")]
        if counted:
            row += [f"{counted[target.name] / 1000:.0f}k",
                    counted[target.name] / counted[floor.name]]
        rows.append(row)
    return headers, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--calls", type=int, default=3000,
                        help="sequential calls per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="interleaved rounds; the best round is shown (default 8)")
    parser.add_argument("--old-host-python", default=os.environ.get("OLD_HOST_PYTHON"),
                        help="the Python of a venv with crunch-model-runner==0.4.2 installed "
                             "(env OLD_HOST_PYTHON)")
    parser.add_argument("--baseline-root", type=Path,
                        help="also measure our host as this checkout has it (before/after)")
    parser.add_argument("--async-method", action="store_true",
                        help="also measure an `async def` method on our host")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per call with callgrind (slow)")
    options = parser.parse_args()
    if shutil.which("h2load") is None:
        parser.error("h2load not found: apt-get install nghttp2-client")
    if options.instructions and shutil.which("valgrind") is None:
        parser.error("valgrind not found: apt-get install valgrind")
    headers, rows = host_cost(options.calls, options.rounds, options.old_host_python,
                              options.async_method, options.baseline_root, options.instructions)
    print(f"{options.calls} sequential no-op Calls per round over one connection, driven by "
          f"h2load; best of {options.rounds} interleaved rounds")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
