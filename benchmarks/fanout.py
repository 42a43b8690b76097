"""Tick time, CPU per call and peak memory of one `predict` fanned out to N models: our client
on each transport, with and without uvloop, against the existing grpcio-based client, in the
same run, against the same servers.

    python -m benchmarks.fanout [--sizes 100 300 1000 5000] [--rounds 2] [--servers 2]
        [--old-python PATH] [--baseline CHECKOUT] [--variants NAME ...]

`--baseline` drives the client of another checkout of this project too (`git worktree add
/tmp/before COMMIT`), in the same rounds, as rows named "... @baseline", and adds the ratio
of each row to its baseline row: a change's cost on the honest path, measured in one run.

Each client runs in a process of its own (benchmarks/fanout_driver.py, and
benchmarks/old_client_driver.py in the venv where `model-runner-client` is installed: its import
name is ours too), so CPU (all threads) and peak RSS are that client's alone. The targets are
bare servers answering constants, in processes of their own.
On a machine with two cores or more the clients run on the first core and the servers on the
others. Rounds interleave the clients, so machine noise hits them alike. By default the servers
are bare ngh2 servers answering constants (benchmarks/fast_server.py): two grpclib servers on
one core answer ~2,000 calls/s, which made every client's tick the servers' (`--server
grpclib`). Also: 100 models of
which 10% never answer, timeout 1 s. Writes benchmarks/out/fanout.png and fanout.json.

Targets (issue 10, default transport, no uvloop, against the grpcio client): CPU per call at
N=1,000 <= 0.4x; tick <= 0.8x at N=1,000 and <= 0.9x at N=300; every call SUCCESS at N=5,000;
peak RSS at N=1,000 <= 0.5x; with 10% hanging, tick <= 1.05x the timeout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import BENCH, OUT, ROOT, median, percentile, start_script, table
from model_runner.process import host_environment

OLD = "grpcio client (model-runner-client 0.14)"


def ticks_for(n: int) -> int:
    return 20 if n <= 300 else 10 if n <= 1000 else 5


def pinned(cpus: set[int]) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, cpus)
    return pin


def drive(command: list[str], cpus: set[int], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=cwd, env=env,
                         preexec_fn=pinned(cpus))
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else
                f"exit {out.returncode}"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def plot(rows: dict[str, dict[int, list[dict[str, Any]]]], path: Path) -> None:
    """Three panels of ratios against the grpcio client (its line: 1, drawn apart), N on a log
    axis with plain tick labels: tick time, CPU per call, peak RSS."""
    import platform

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    baseline = rows.get(OLD, {})
    metrics = (("times", "tick time"), ("cpu_per_call_us", "client CPU per call"),
               ("peak_rss_mb", "client peak memory"))

    def value(runs: list[dict[str, Any]], key: str) -> float:
        if key == "times":
            return median([t for r in runs for t in r["times"]])
        return median([r[key] for r in runs])

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharex=True)
    all_sizes: set[int] = set()
    for name, by_n in rows.items():
        if name == OLD:
            continue
        sizes = sorted(n for n, runs in by_n.items() if runs and "error" not in runs[0]
                       and baseline.get(n) and "error" not in baseline[n][0])
        all_sizes.update(sizes)
        for ax, (key, _) in zip(axes, metrics, strict=True):
            ratios = [value(by_n[n], key) / value(baseline[n], key) for n in sizes]
            ax.plot(sizes, ratios, marker="o", label=name)
    for ax, (_, label) in zip(axes, metrics, strict=True):
        ax.axhline(1.0, color="black", linewidth=2.5, linestyle="--",
                   label="grpcio client (model-runner-client 0.14) = 1")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(all_sizes) or [1]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x):,}"))
        ax.set_xlabel("models (N)")
        ax.set_ylabel(f"{label}, ratio to the grpcio client (lower is better)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    loop = "default asyncio loop and uvloop as named"
    fig.suptitle(f"One predict fanned out to N models: our client against the grpcio client "
                 f"in the same run ({os.cpu_count()} cores, {platform.machine()}, Python "
                 f"{platform.python_version()}, {loop}; client on one core, servers on the "
                 "other)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 5000],
                        help="numbers of models to fan out to (default: 100 300 1000 5000)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds per size; under 3 a figure is a warning, not "
                             "a result (default 2)")
    parser.add_argument("--servers", type=int, default=2,
                        help="bare server processes the models are spread over (default 2)")
    parser.add_argument("--server", choices=["ngh2", "grpclib"], default="ngh2",
                        help="the bare servers: ngh2 (benchmarks/fast_server.py, cheap enough "
                             "that the client is measured) or grpclib (bare_server.py)")
    parser.add_argument("--old-python", default=os.environ.get("OLD_CLIENT_PYTHON"),
                        help="the Python of a venv with model-runner-client==0.14.0, the "
                             "baseline every ratio is against (env OLD_CLIENT_PYTHON)")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of this project whose client is driven too, in the "
                             "same rounds (its rows end in @baseline)")
    parser.add_argument("--variants", nargs="+",
                        help="only these client rows (default: all): 'ngh2 (default)', "
                             "'grpclib', 'ngh2 + uvloop', 'grpclib + uvloop'")
    options = parser.parse_args()

    available = sorted(os.sched_getaffinity(0))
    client_cpus = {available[0]}
    server_cpus = set(available[1:]) or client_cpus
    variants: dict[str, list[str]] = {"ngh2 (default)": ["--transport", "ngh2"],
                                      "grpclib": ["--transport", "grpclib"]}
    if importlib.util.find_spec("uvloop") is not None:
        variants["ngh2 + uvloop"] = ["--transport", "ngh2", "--uvloop"]
        variants["grpclib + uvloop"] = ["--transport", "grpclib", "--uvloop"]
    else:
        print("uvloop is not installed (pip install -e '.[uvloop]'): its rows are left out")
    if options.variants:
        variants = {name: flags for name, flags in variants.items() if name in options.variants}
    env = host_environment([ROOT])
    checkouts = {"": (ROOT, env)}
    if options.baseline is not None:
        checkouts[" @baseline"] = (options.baseline.resolve(),
                                   host_environment([options.baseline.resolve()]))
    old_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    script = "fast_server.py" if options.server == "ngh2" else "bare_server.py"
    servers = [start_script(script) for _ in range(options.servers)]
    hang_server = start_script(script, "--hang")
    for proc, _ in [*servers, hang_server]:
        os.sched_setaffinity(proc.pid, server_cpus)
    ports = [str(port) for _, port in servers]
    rows: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    try:
        for n in options.sizes:
            ticks = ticks_for(n)
            for _ in range(options.rounds):
                for name, flags in variants.items():
                    for suffix, (checkout, checkout_env) in checkouts.items():
                        rows[name + suffix][n].append(drive(
                            [sys.executable, "-m", "benchmarks.fanout_driver", "--n", str(n),
                             "--ticks", str(ticks), *flags, *ports], client_cpus,
                            checkout_env, checkout))
                if options.old_python:
                    rows[OLD][n].append(drive(
                        [options.old_python, str(BENCH / "old_client_driver.py"), str(n),
                         str(ticks), "30", *ports], client_cpus, old_env, Path("/")))
            print(f"N={n} done", flush=True)
        hang = drive([sys.executable, "-m", "benchmarks.fanout_driver", "--n", "100", "--ticks",
                      "5", "--timeout", "1.0", "--hang-port", str(hang_server[1]), *ports],
                     client_cpus, env, ROOT)
    finally:
        for proc, _ in [*servers, hang_server]:
            proc.kill()

    table_rows = []
    for n in options.sizes:
        old = rows[OLD][n] if OLD in rows and rows[OLD][n] and "error" not in rows[OLD][n][0] \
            else None
        old_tick = median([t for r in old for t in r["times"]]) if old else None
        old_cpu = median([r["cpu_per_call_us"] for r in old]) if old else None
        old_rss = median([r["peak_rss_mb"] for r in old]) if old else None
        for name, by_n in rows.items():
            runs = by_n[n]
            errors = [r["error"] for r in runs if "error" in r]
            if errors:
                table_rows.append([n, name, f"failed: {errors[0][:60]}", "", "", "", "", "", "",
                                   ""])
                continue
            times = [t for r in runs for t in r["times"]]
            tick, cpu = median(times), median([r["cpu_per_call_us"] for r in runs])
            rss = median([r["peak_rss_mb"] for r in runs])
            ok = min(r["ok"] for r in runs)
            base = rows.get(name + " @baseline", {}).get(n)
            if base and "error" not in base[0]:
                against_baseline = (f"{tick / median([t for r in base for t in r['times']]):.2f}"
                                    f" / {cpu / median([r['cpu_per_call_us'] for r in base]):.2f}")
            else:
                against_baseline = "-"
            table_rows.append([
                n, name, tick * 1000, percentile(times, 0.9) * 1000, cpu, rss, f"{ok}/{n}",
                f"{tick / old_tick:.2f}" if old_tick else "-",
                f"{cpu / old_cpu:.2f}" if old_cpu else "-",
                f"{rss / old_rss:.2f}" if old_rss else "-", against_baseline])
    print(f"tick = one predict to every model; {options.servers} bare {options.server} servers; "
          f"client on "
          f"CPU {sorted(client_cpus)}, servers on {sorted(server_cpus)}; {options.rounds} "
          "interleaved rounds; warm-up ticks excluded; ratios against the grpcio client")
    print(table(["N", "client", "median ms", "p90 ms", "CPU µs/call", "peak RSS MB", "SUCCESS",
                 "tick ratio", "CPU ratio", "RSS ratio", "tick / CPU vs @baseline"],
                table_rows))
    if options.rounds < 3:
        print(f"\nWARNING: {options.rounds} round(s) per size on a shared 2-core machine: one "
              "round at N=100 once gave 1.69x where three gave 0.60x. Use --rounds 3 or more "
              "before trusting a ratio.")
    if "error" in hang:
        print(f"\n10% hanging: failed: {hang['error']}")
    else:
        print(f"\n100 models, 10% never answering, timeout 1.0s (default transport): tick median "
              f"{median(hang['times']):.3f}s, max {max(hang['times']):.3f}s "
              f"({median(hang['times']) / 1.0:.3f}x the timeout)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fanout.json").write_text(json.dumps({"rows": rows, "hang": hang}, indent=1))
    if importlib.util.find_spec("matplotlib") is None:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')")
    else:
        plot(rows, OUT / "fanout.png")
        print(f"plot: {OUT / 'fanout.png'}")


if __name__ == "__main__":
    sys.exit(main())
