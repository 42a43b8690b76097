"""Calls under churn: hosts killed and models redeployed at random while the client ticks.

Regression test for three bugs churn found: a cancellation escaping into `client.call`, a model
missing from the client while the orchestrator had it RUNNING, and orphaned host processes.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from model_runner.local_orchestrator import LocalOrchestrator, ModelSpec
from model_runner_client import CallStatus, ModelRunnerClient
from tests.hosts import BASE, EXAMPLES, SUBMISSIONS, until

pytestmark = pytest.mark.anyio


async def test_no_call_fails_and_no_model_is_lost_under_churn(transport: str) -> None:
    rng = random.Random(transport)  # one churn sequence per transport (two cost 27 s more)
    specs = [ModelSpec(SUBMISSIONS / "good_tracker", f"m{i}") for i in range(7)]
    async with LocalOrchestrator("churn", specs, python_path=[EXAMPLES],
                                 max_restarts=1000) as orchestrator:
        await orchestrator.wait_running(timeout=60)
        client = ModelRunnerClient("churn", "127.0.0.1", orchestrator.port, base_classname=BASE,
                                   timeout=2.0, max_consecutive_failures=1000,
                                   max_consecutive_timeouts=1000)
        async with client:
            await client.wait_for_models(7, timeout=60)
            churn = []
            ticks = 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                results = await client.call("predict", "BTC", 2)  # must never raise
                # Hosts die and move under the calls: a call may time out or find its host
                # gone, but these models never fail.
                assert not results.with_status(CallStatus.FAILURE), results.with_status(
                    CallStatus.FAILURE)
                ticks += 1
                if ticks % 6 == 0:
                    victim = f"m{rng.randrange(1, 7)}"
                    if rng.random() < 0.5:
                        churn.append(asyncio.ensure_future(orchestrator.redeploy(victim)))
                    else:
                        orchestrator.kill(victim)
            await asyncio.gather(*churn)
            await orchestrator.wait_running(timeout=60)  # a killed model waits for its restart
            # Every model back in the client, on its current host: the client may learn of the
            # last restarts a few frames after wait_running() returns.
            await until(lambda: {m.model_id: m.port for m in client.models} == orchestrator.ports(),
                        timeout=60)  # the client holds the current hosts, one for one
            assert (await client.call("predict", "BTC", 2)).counts()[CallStatus.SUCCESS] == 7
        # Internals, on purpose: every host process it ever spawned, replaced ones included.
        spawned = list(orchestrator._spawned)
    assert spawned and all(h.proc is not None and h.proc.poll() is not None for h in spawned)
