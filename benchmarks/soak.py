"""Soak: many models, thousands of ticks with churn (redeploys, crashed hosts restarted) for a
bounded time; resident memory, open file descriptors and live tasks of the client process and of
one model host, at the start and at the end.

    python -m benchmarks.soak [--models 100] [--duration 120] [--churn-every 50]

Target (issue 5): no growth beyond noise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass

from benchmarks._common import EXAMPLES, table
from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec
from model_runner_client import CallStatus, ModelRunnerClient

BASE = "starter_challenge.tracker.TrackerBase"


@dataclass
class Sample:
    rss_mb: float
    fds: int
    tasks: int | None = None


def sample(pid: int, tasks: int | None = None) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return Sample(rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), tasks)


def on_current_hosts(orchestrator: LocalOrchestrator, client: ModelRunnerClient) -> bool:
    """Whether the client's ready models are the orchestrator's current hosts, one for one."""
    return {model.model_id: model.port for model in client.models} == orchestrator.ports()


async def soak(models: int, duration: float, churn_every: int, timeout: float,
               seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    specs = [ModelSpec(EXAMPLES / "submissions" / "good_tracker", f"m{i}") for i in range(models)]
    stats = {"ticks": 0, "redeploys": 0, "kills": 0, "calls": 0, "success": 0}
    async with LocalOrchestrator("soak", specs, python_path=[EXAMPLES],
                                 max_restarts=1_000_000) as orchestrator:
        await orchestrator.wait_running(timeout=180)
        client = ModelRunnerClient("soak", "127.0.0.1", orchestrator.port, base_classname=BASE,
                                   timeout=timeout, max_consecutive_timeouts=1_000_000,
                                   max_consecutive_failures=1_000_000)
        async with client:
            await client.wait_for_models(models, timeout=180)
            watched = "m0"  # never churned: its host is the one measured
            host_pid = orchestrator.models[watched].host.pid  # type: ignore[union-attr]
            churn: list[asyncio.Future[None]] = []

            async def ticks(count: int) -> None:
                for _ in range(count):
                    await client.call("tick", {"BTC": rng.uniform(9e4, 1e5)})
                    results = await client.call("predict", "BTC", 5)
                    stats["ticks"] += 1
                    stats["calls"] += len(results)
                    stats["success"] += results.counts()[CallStatus.SUCCESS]
                    if stats["ticks"] % churn_every == 0:
                        victim = f"m{rng.randrange(1, models)}"
                        if rng.random() < 0.5:
                            churn.append(asyncio.ensure_future(orchestrator.redeploy(victim)))
                            stats["redeploys"] += 1
                        else:
                            orchestrator.kill(victim)
                            stats["kills"] += 1

            await ticks(100)  # warm up: caches, pools and first connections settle
            start = (sample(os.getpid(), len(asyncio.all_tasks())), sample(host_pid))
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                await ticks(20)
            await asyncio.gather(*churn)
            # Let restarts and redeploys settle before measuring: every host back (a kill makes
            # its model wait for the restart) and the client on exactly the orchestrator's
            # current hosts, which it may learn of a few frames after wait_running() returns.
            await orchestrator.wait_running(timeout=120)
            async with asyncio.timeout(120):
                while not on_current_hosts(orchestrator, client):  # noqa: ASYNC110 - two processes, no shared event
                    await asyncio.sleep(0.05)
            for _ in range(20):
                await client.call("predict", "BTC", 5)
            end = (sample(os.getpid(), len(asyncio.all_tasks())), sample(host_pid))
            stats["ready_at_end"] = len(client.models)
    return {"start": start, "end": end, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--models", type=int, default=100, help="models (default 100)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of ticking")
    parser.add_argument("--churn-every", type=int, default=50, help="ticks between churn events")
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="each call's deadline in seconds (default 2.0)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    report = asyncio.run(soak(options.models, options.duration, options.churn_every,
                              options.timeout))
    start, end = report["start"], report["end"]
    assert isinstance(start, tuple) and isinstance(end, tuple)
    rows = []
    for who, before, after in (("client", start[0], end[0]), ("model host", start[1], end[1])):
        rows.append([who, "RSS MB", before.rss_mb, after.rss_mb, after.rss_mb / before.rss_mb])
        rows.append([who, "open fds", before.fds, after.fds, after.fds / before.fds])
        if before.tasks is not None:
            rows.append([who, "live tasks", before.tasks, after.tasks,
                         after.tasks / before.tasks])
    print(f"{options.models} models, {report['ticks']} ticks (tick + predict) in "
          f"{options.duration:.0f}s of soak, {report['redeploys']} redeploys, "
          f"{report['kills']} crashed hosts; {report['success']}/{report['calls']} predict "
          f"calls succeeded; {report['ready_at_end']} models ready at the end")
    print(table(["process", "measure", "start", "end", "end/start"], rows))


if __name__ == "__main__":
    main()
