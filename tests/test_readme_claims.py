"""README promises that had no test of their own, one test each (issue 15)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from model_runner.wire import DynamicSubclassServiceStub, StatusCode
from model_runner_client import ModelEndpoint, OrchestratorLink
from model_runner_client.orchestrator import backoff_delay
from model_runner_client.policy import Streaks
from tests.clients import address_client, hostile, models_at
from tests.hosts import HostProcess, call, ok, set_up

# --- the failure policy, as a state machine -------------------------------------------------


class StreakMachine(RuleBasedStateMachine):
    """Any sequence of successes, failures (of two methods) and timeouts (answered or not):
    a verdict comes exactly when a streak reaches its limit, with the right code; a success
    resets what it should; cooling down skips ceil(streak/2) calls."""

    def __init__(self) -> None:
        super().__init__()
        self.streaks = Streaks(max_failures=3, max_timeouts=4)
        self.failures: dict[str, int] = {}
        self.timeouts = 0
        self.unreachable = 0
        self.disconnected = False

    @rule(method=st.sampled_from(["tick", "predict"]))
    def success(self, method: str) -> None:
        if self.disconnected:
            return
        self.streaks.success(method)
        self.failures.pop(method, None)
        self.timeouts = self.unreachable = 0

    @rule(method=st.sampled_from(["tick", "predict"]))
    def failure(self, method: str) -> None:
        if self.disconnected:
            return
        verdict = self.streaks.failure(method)
        self.failures[method] = self.failures.get(method, 0) + 1
        self.timeouts = self.unreachable = 0
        expected = "MULTIPLE_FAILED" if self.failures[method] >= 3 else None
        assert verdict == expected
        self.disconnected = verdict is not None

    @rule(unreachable=st.booleans())
    def timeout(self, unreachable: bool) -> None:
        if self.disconnected:
            return
        verdict = self.streaks.timeout(unreachable=unreachable)
        self.timeouts += 1
        self.unreachable = self.unreachable + 1 if unreachable else 0
        if self.timeouts >= 4:
            # CONNECTION_FAILED only when nothing ever answered in the whole streak.
            expected = "CONNECTION_FAILED" if self.unreachable >= self.timeouts \
                else "MULTIPLE_TIMEOUT"
            assert verdict == expected
            self.disconnected = True
        else:
            assert verdict is None
            assert self.streaks.skips_left == math.ceil(self.timeouts / 2)

    @invariant()
    def counts_agree(self) -> None:
        if not self.disconnected:
            assert self.streaks.timeouts == self.timeouts
            assert {k: v for k, v in self.streaks.failures.items() if v} == self.failures


TestStreakMachine = StreakMachine.TestCase
TestStreakMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


# --- the orchestrator link's backoff ---------------------------------------------------------


@given(st.integers(0, 40), st.floats(0.01, 5), st.floats(5, 120))
def test_the_link_backs_off_doubling_capped_with_jitter(attempt: int, initial: float,
                                                        maximum: float) -> None:
    delay = backoff_delay(attempt, initial, maximum)
    full = min(maximum, initial * 2 ** attempt)
    assert full / 2 <= delay <= full <= maximum


def test_jitter_spreads_reconnects() -> None:
    delays = {round(backoff_delay(3, 0.5, 30.0), 6) for _ in range(50)}
    assert len(delays) > 40  # not all clients at once


# --- the event loop --------------------------------------------------------------------------


def test_model_runner_uvloop_0_keeps_the_default_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from model_runner import eventloop
    monkeypatch.setenv("MODEL_RUNNER_UVLOOP", "0")
    assert not eventloop.uvloop_enabled()

    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_type()).startswith("asyncio")
    monkeypatch.setenv("MODEL_RUNNER_UVLOOP", "1")
    assert eventloop.uvloop_enabled()  # installed with the test extra
    assert eventloop.run(loop_type()).startswith("uvloop")


# --- the client: joins and the orchestrator's frames ----------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("transport")
async def test_at_most_64_models_are_set_up_at_once() -> None:
    """200 models on a host that holds each Setup 0.3 s: they all get set up, never more than
    64 Setups at once (the host counts them across its connections), and not one by one; on
    each transport."""
    with hostile("slow-setup") as port:
        async with address_client(models_at(port, 200), setup_timeout=20) as client:
            await client.wait_for_models(200, timeout=60)
            most = (await client.call("predict", models=["m0"]))["m0"].output
    assert 16 <= most <= 64, most  # README: "At most 64 models are set up at once"


class _Recorder:
    """A ModelRegistry that notes, for each entry applied, how far a concurrent task got."""

    def __init__(self) -> None:
        self.steps = 0
        self.seen: list[int] = []

    def upsert(self, endpoint: ModelEndpoint) -> None:
        self.seen.append(self.steps)

    def remove(self, model_id: str, reason: str, *, deployment_id: str | None = None) -> None:
        self.seen.append(self.steps)

    def model_ids(self) -> set[str]:
        return set()

    def deployment_of(self, model_id: str) -> str | None:
        return None

    def listed(self) -> None:
        pass


@pytest.mark.anyio
async def test_large_frames_are_applied_in_slices_of_200_entries() -> None:
    """An update of 1,000 entries is applied 200 at a time, and other tasks (ticks, probes) run
    between slices."""
    frame = json.dumps({"event": "update", "data": [
        {"model_id": f"m{i}", "deployment_id": "d", "state": "RUNNING" if i % 3 else "STOPPED",
         "ip": "10.0.0.1", "port": 50051, "infos": {}} for i in range(1000)]})
    recorder = _Recorder()

    async def other_task() -> None:
        while True:
            recorder.steps += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        await OrchestratorLink("crunch", "127.0.0.1", 1).handle(frame, recorder)
        group.cancel_scope.cancel()
    assert len(recorder.seen) == 1000
    slices = [len(list(entries)) for _, entries in itertools.groupby(recorder.seen)]
    assert slices == [200] * 5, slices


# --- the host ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_methods_run_on_one_thread_per_model(toolbox_host: HostProcess) -> None:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        threads = {tuple(await ok(stub, "thread")) for _ in range(5)}
        threads |= {tuple(t) for t in await asyncio.gather(*(ok(stub, "thread")
                                                             for _ in range(5)))}
        coroutine_thread = tuple(await ok(stub, "async_thread"))
    assert len(threads) == 1  # always the same thread
    # `async def` methods too, on a loop of that thread's own: never the host's loop, which a
    # coroutine that spins once held whole.
    assert threads == {coroutine_thread}
    assert coroutine_thread[1] != "MainThread"


@pytest.mark.anyio
async def test_requests_hold_at_most_1024_arguments_and_256_character_keywords(
        toolbox_host: HostProcess) -> None:
    """README "Requests": 1,024 positional and 1,024 keyword arguments are taken, one more is
    INVALID_ARGUMENT; a keyword of 256 characters is taken, one of 257 is not."""
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        assert len((await ok(stub, "echo", *range(1024)))["args"]) == 1024
        echoed = await ok(stub, "echo", **{f"k{i}": i for i in range(1024)})
        assert len(echoed["kwargs"]) == 1024
        assert (await ok(stub, "echo", **{"k" * 256: 1}))["kwargs"] == {"k" * 256: 1}
        for too_many in ({"args": range(1025)}, {"kwargs": {f"k{i}": i for i in range(1025)}},
                         {"kwargs": {"k" * 257: 1}}):
            code, message, _ = await call(stub, "echo", *too_many.get("args", ()),
                                          **dict(too_many.get("kwargs", {})))
            assert code == StatusCode.INVALID_ARGUMENT, (code, message)
            assert "at most" in message, message


# --- the deployed security modes --------------------------------------------------------------


def test_a_delegation_without_expires_at_never_expires(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from model_runner.wire.auth import Delegation, verify_delegation
    from tests.deployment import wallet_address

    wallet = ed25519.Ed25519PrivateKey.generate()
    tls_key = b"\x30" + os.urandom(40)  # any bytes stand for the TLS key here
    message = json.dumps({"cert_pub": base64.b64encode(tls_key).decode(), "model_id": "m",
                          "hotkey": None}).encode()
    delegation = Delegation(base64.b64encode(message).decode(),
                            base64.b64encode(wallet.sign(message)).decode(),
                            wallet_address(wallet))
    expires = verify_delegation(delegation.headers(), wallet_pubkey=wallet_address(wallet),
                                model_id="m", hotkey=None, peer_spki=tls_key,
                                now=time.time() + 10 * 365 * 86400)
    assert expires == float("inf")


def test_the_host_reads_a_renewed_delegation_without_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from model_runner.security import DelegationHeaders
    from model_runner.wire.auth import SERVER_AUTH_MESSAGE, Delegation, cert_spki
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    wallet = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "cruncher_msg.json"

    def sign(model_id: str) -> Delegation:
        return Delegation.sign(wallet, cert_pub=cert_spki(pki.server_cert.read_bytes()),
                               model_id=model_id, hotkey=None, expires_at=int(time.time()) + 60)

    sign("first").save(path)
    headers = DelegationHeaders(path, pki.server_cert)
    headers.RECHECK_SECONDS = 0.0

    class Event:
        def __init__(self) -> None:
            self.metadata: dict[str, Any] = {}

    def served() -> str:
        event = Event()
        asyncio.run(headers(event))
        return str(event.metadata[SERVER_AUTH_MESSAGE])

    first = served()
    renewed = sign("renewed")
    renewed.save(path)
    os.utime(path, (time.time() + 5, time.time() + 5))  # a later modification time
    assert served() == renewed.message != first
    path.write_text("{not json")
    os.utime(path, (time.time() + 10, time.time() + 10))
    with caplog.at_level(logging.ERROR, logger="model_runner.security"):
        assert served() == renewed.message  # a bad renewal keeps the previous delegation
    assert "kept the previous delegation" in caplog.text
