"""HTTP/2 abuse against one model host: what each attack costs the host (CPU seconds, RSS that
stays), how long health goes unanswered while it lasts, and how the host ends it; on asyncio and
uvloop. With --baseline-python, the same attacks against the host of another installation (a
venv with an earlier commit of this repository installed, e.g. `git worktree add /tmp/before
<commit> && python3 -m venv /tmp/bv && /tmp/bv/bin/pip install '/tmp/before[uvloop]'`), in the
same run.

    python -m benchmarks.host_floods [--scale 1.0] [--baseline-python PATH]

The attacks (tests/h2peer.py): rapid reset (HEADERS+RST_STREAM, CVE-2023-44487), PING and
SETTINGS floods whose acks are never read, 1,100 connections that never send the preface, and
streams held by a zero window (20 connections x 100 requests), and 200 connections (past the
64-connection cap) each holding 100 or 10 streams behind a zero window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import EXAMPLES, ROOT, table
from benchmarks.fanout_common import raise_file_limit
from model_runner.process import ModelHostProcess
from tests import h2peer

TOOLBOX = ROOT / "tests" / "submissions" / "toolbox"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def attacks(scale: float) -> dict[str, Any]:
    def n(count: int) -> int:
        return max(1, int(count * scale))

    def rapid_reset(port: int) -> str:
        return str(h2peer.Attacker(port).rapid_reset(n(40_000)))

    def flood(kind: str) -> Any:
        def run(port: int) -> str:
            return str(h2peer.Attacker(port, receive_buffer=4096).control_flood(kind,
                                                                                n(400_000)))
        return run

    def silent(port: int) -> str:
        sockets = []
        try:
            for _ in range(n(1_100)):
                try:
                    sockets.extend(h2peer.silent_connections(port, 1))
                except OSError as exc:
                    return f"refused after {len(sockets)}: {exc}"
            time.sleep(2)  # time passes while they stay silent
            return f"{sum(h2peer.is_closed_by_peer(s, 0.001) for s in sockets)} of " \
                   f"{len(sockets)} closed by the host"
        finally:
            for sock in sockets:
                sock.close()

    def zero_window(port: int) -> str:
        attackers = []
        try:
            for _ in range(n(20)):
                attacker = h2peer.Attacker(port)
                attackers.append(attacker)
                attacker.open_streams(100)
            time.sleep(1)  # time passes while the streams are held
            closed = sum(h2peer.is_closed_by_peer(a.sock, 0.001) for a in attackers)
            return f"{closed} of {len(attackers)} connections closed by the host"
        finally:
            for attacker in attackers:
                attacker.close()

    def held_streams(per_connection: int) -> Any:
        def run(port: int) -> str:
            """Issue 22: connections well past the cap, each holding its streams behind a zero
            window, never reading."""
            attackers = []
            try:
                for _ in range(n(200)):
                    attacker = h2peer.Attacker(port)
                    attackers.append(attacker)
                    attacker.open_streams(per_connection)
                closed = sum(h2peer.is_closed_by_peer(a.sock, 0.001) for a in attackers)
                return f"{closed} of {len(attackers)} connections closed by the host"
            finally:
                for attacker in attackers:
                    attacker.close()
        return run

    return {"rapid reset": rapid_reset, "PING flood": flood("ping"),
            "SETTINGS flood": flood("settings"), "silent connections": silent,
            "zero-window streams": zero_window,
            "200 conns x 100 held streams": held_streams(100),
            "200 conns x 10 held streams": held_streams(10)}


async def measure(name: str, attack: Any, loop: str, python: str | None) -> list[Any]:
    env = {"MODEL_RUNNER_UVLOOP": "1" if loop == "uvloop" else "0"}
    # On 127.0.0.1: hosts before the dual-stack default served [::] over IPv6 only.
    host = ModelHostProcess(TOOLBOX, ["--log-level", "WARNING"], env=env,
                            python_path=[EXAMPLES], host="127.0.0.1",
                            python=python or sys.executable, cwd=TOOLBOX)
    host.start()
    try:
        await asyncio.sleep(0.5)  # time passes: the host settles before it is measured
        rss, cpu = h2peer.rss_bytes(host.pid), cpu_seconds(host.pid)
        outcome, watch = await h2peer.while_watching(host.port, lambda: attack(host.port))
        await asyncio.sleep(1.0)  # time passes: what the host keeps after the attack
        return [name, loop, "baseline" if python else "this tree",
                cpu_seconds(host.pid) - cpu, (h2peer.rss_bytes(host.pid) - rss) / 1e6,
                watch.worst, len(watch.failures), str(outcome)[:60] + "".join(
                    f"; health: {f[:60]}" for f in watch.failures[:1])]
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every attack's size (default 1: the issue's sizes)")
    parser.add_argument("--baseline-python", default=None,
                        help="the Python of a venv with another version of this project, "
                             "whose host is attacked too, for comparison")
    parser.add_argument("--attacks", nargs="+", default=None,
                        help="run only the attacks whose names contain one of these words")
    parser.add_argument("--loops", nargs="+", default=["asyncio", "uvloop"],
                        help="event loops to run the host on (default: asyncio uvloop)")
    options = parser.parse_args()
    raise_file_limit()  # the attacker holds 1,100 sockets beside its health checks
    rows = []
    for name, attack in attacks(options.scale).items():
        if options.attacks and not any(word in name for word in options.attacks):
            continue
        for loop in options.loops:
            for python in [None, *([options.baseline_python]
                                   if options.baseline_python else [])]:
                rows.append(asyncio.run(measure(name, attack, loop, python)))
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(table(["attack", "loop", "host", "host CPU s", "RSS kept MB", "worst health s",
                 "health failures", "outcome"], rows))


if __name__ == "__main__":
    main()
