"""The whole system on one machine: the local orchestrator running model hosts for the example
submissions, the client following it over the orchestrator's websocket, and the example
coordinator ticking and predicting with a live table, then a summary.

    python examples/demo.py [--models 3] [--ticks 10] [--interval 1.0] [--timeout 1.0]

The submissions: N good trackers, an async one, a slow one (answers after the deadline), one
that raises, and one that implements no subclass of the base class. Exits 0 when the good models
answered every tick.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import anyio

try:
    from rich import box
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
except ModuleNotFoundError:
    sys.exit("demo: this needs the demo extra: pip install -e '.[demo]' "
             "(or pip install 'model-runner-client[demo]')")

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))  # the Crunch package and the example coordinator

from coordinator import Board, Coordinator  # noqa: E402

from model_runner.eventloop import Interrupted, run_until_signalled  # noqa: E402
from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec  # noqa: E402
from model_runner_client import FailureReport, ModelRunnerClient  # noqa: E402

BASE = "starter_challenge.tracker.TrackerBase"
SUBMISSIONS = EXAMPLES / "submissions"


def lineup(good: int) -> list[tuple[str, Path]]:
    models = [(f"good-{i + 1}", SUBMISSIONS / "good_tracker") for i in range(good)]
    models += [("async", SUBMISSIONS / "async_tracker"), ("slow", SUBMISSIONS / "slow_tracker"),
               ("raising", SUBMISSIONS / "raising_tracker"),
               ("no-subclass", SUBMISSIONS / "no_subclass")]
    return models


LEGEND = ("ms: last call's latency; ok / fail / t/o: calls that came back SUCCESS, FAILURE, "
          "TIMEOUT; err: mean |first predicted price - the price that followed|")


def render(board: Board, title: str, lineup: list[str],
           never_ready: dict[str, str] | None = None) -> Table:
    """Every model of the lineup, in its order, in a table that fits 80 columns: the last
    column wraps."""
    table = Table(title=title, title_justify="left", caption=LEGEND, caption_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for column in ("model", "status", "ms", "ok", "fail", "t/o", "err"):
        table.add_column(column, no_wrap=True,
                         justify="left" if column in ("model", "status") else "right")
    table.add_column("last output / detail", overflow="fold", ratio=1, min_width=16)
    colors = {"SUCCESS": "green", "FAILURE": "red", "TIMEOUT": "yellow"}
    for model_id in lineup:
        stats = board.stats.get(model_id)
        if stats is None:
            reason = (never_ready or {}).get(model_id)
            table.add_row(model_id, "[dim]NOT SET UP[/]", "", "", "", "", "",
                          f"{reason.partition(':')[0]} (reported: see below)" if reason
                          else "being set up")
            continue
        status = "LEFT" if stats.left else stats.last_status
        shown = _brief(stats.last_output or stats.last_detail or stats.left)
        table.add_row(stats.model_id, f"[{colors.get(status, 'dim')}]{status}[/]",
                      f"{stats.last_latency_us / 1000:.1f}", str(stats.successes),
                      str(stats.failures), str(stats.timeouts),
                      "-" if math.isnan(stats.mean_error) else f"{stats.mean_error:.1f}", shown)
    return table


def _brief(text: str, limit: int = 60) -> str:
    """A cell's text, at most `limit` characters (the reports below have the whole story)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def never_ready(reports: list[FailureReport]) -> dict[str, str]:
    """Why a model never became ready: its report, when there is one."""
    return {r.model.model_id: f"{r.code}: {r.reason}" for r in reports}


async def run(options: argparse.Namespace, console: Console) -> int:
    specs = [ModelSpec(path, name, cruncher=f"cruncher-{name}")
             for name, path in lineup(options.models)]
    names = [spec.id for spec in specs]
    reports: list[FailureReport] = []
    orchestrator = LocalOrchestrator("demo", specs, python_path=[EXAMPLES])
    async with orchestrator:
        console.print(f"local orchestrator on {orchestrator.url}, starting {len(specs)} "
                      "model hosts")
        await orchestrator.wait_running(timeout=60)
        metrics = None
        if options.metrics_port is not None:  # the metrics extra: pip install -e '.[metrics]'
            import prometheus_client

            from model_runner_client.metrics import PrometheusMetrics
            metrics = PrometheusMetrics()
            prometheus_client.start_http_server(options.metrics_port, addr="127.0.0.1")
            console.print(f"metrics on http://127.0.0.1:{options.metrics_port}/metrics")
        client = ModelRunnerClient("demo", "127.0.0.1", orchestrator.port, base_classname=BASE,
                                   timeout=options.timeout, on_failure=reports.append,
                                   metrics=metrics)
        async with client:
            await client.wait_for_models(timeout=60)
            console.print(f"{len(client.models)} models ready: "
                          + ", ".join(m.model_id for m in client.models))
            # Transient: the summary below prints the final table, once.
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                def refresh(board: Board) -> None:
                    live.update(render(board, f"tick {board.ticks}/{options.ticks} "
                                              f"({board.last_tick_ms:.0f} ms)", names,
                                       never_ready(reports)))

                coordinator = Coordinator(client, interval=options.interval, on_tick=refresh)
                board = await coordinator.run(options.ticks)
            # Let the last failure reports reach the orchestrator (a second at most).
            with anyio.move_on_after(1.0):
                while len(orchestrator.reports) < len(reports):  # noqa: ASYNC110 - another peer
                    await anyio.sleep(0.02)
        stopped = sorted(r["model_id"] for r in orchestrator.reports)

    console.print("\n[bold]Summary[/]")
    console.print(render(board, f"{board.ticks} ticks", names, never_ready(reports)))
    for report in reports:
        console.print(f"reported {report.model.model_id}: {report.code} ({report.reason})")
    console.print(f"stopped by the orchestrator after a report: {', '.join(stopped) or 'none'}")
    good = [s for name, s in board.stats.items() if name.startswith("good-")]
    healthy = bool(good) and all(s.successes == board.ticks for s in good)
    console.print(f"good models answered every tick: {'yes' if healthy else 'NO'}")
    return 0 if healthy else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--models", type=int, default=3, help="good trackers (default 3)")
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--timeout", type=float, default=1.0, help="deadline of each call")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve the client's Prometheus metrics on this port (needs the "
                             "metrics extra)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    console = Console()
    try:
        status = run_until_signalled(run, options, console)
    except Interrupted as exc:  # the hosts were stopped while the run was cancelled
        print(f"\ndemo: interrupted ({exc}); every model host stopped", file=sys.stderr)
        sys.exit(128 + exc.signum)
    sys.exit(status)


if __name__ == "__main__":
    main()
