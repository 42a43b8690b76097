"""The orchestrator link against a scripted websocket peer replaying the tricky sequences."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time

import anyio
import anyio.lowlevel
import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st

from model_runner_client import CallStatus, EventKind, ModelEndpoint, ModelEvent, OrchestratorLink
from model_runner_client.orchestrator import backoff_delay, parse_entry
from tests.hosts import TEST_SUBMISSIONS, HostProcess, until
from tests.peer import Peer, client_for, entry, ids, settle

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


async def test_init_and_updates_drive_the_model_set(peer: Peer, good_host: HostProcess,
                                                    toolbox_host: HostProcess) -> None:
    peer.init = [entry("a", good_host)]
    events: list[ModelEvent] = []
    async with client_for(peer, events) as client:
        await client.wait_for_models(1, timeout=20)
        a = client.models[0]
        assert (a.model_name, a.cruncher_name, a.cruncher_id, a.deployment_id) == (
            "a-name", "alice", "c1", "d1")
        await peer.send("update", [entry("b", toolbox_host)])
        await client.wait_for_models(2, timeout=20)
        await peer.send("update", [entry("a", good_host, state="STOPPED")])
        await until(lambda: ids(client) == {"b"})
        await peer.send("update", [entry("a", good_host, state="STOPPED")])  # duplicate
        await peer.send("update", [entry("b", toolbox_host, state="RECOVERING")])
        await until(lambda: ids(client) == set())
        await peer.send("update", [entry("b", toolbox_host)])  # recovered, same deployment
        await client.wait_for_models(1, timeout=20)
    kinds = [(e.kind, e.model.model_id) for e in events]
    assert kinds == [(EventKind.JOINED, "a"), (EventKind.JOINED, "b"), (EventKind.LEFT, "a"),
                     (EventKind.LEFT, "b"), (EventKind.JOINED, "b")]


async def test_redeploy_with_running_before_the_old_stopped(peer: Peer, good_host: HostProcess,
                                                            toolbox_host: HostProcess) -> None:
    peer.init = [entry("m", good_host, "d1")]
    events: list[ModelEvent] = []
    async with client_for(peer, events) as client:
        await client.wait_for_models(1, timeout=20)
        await peer.send("update", [entry("m", toolbox_host, "d2")])  # new deployment first
        await until(lambda: any(e.kind is EventKind.REDEPLOYED for e in events))
        await peer.send("update", [entry("m", good_host, "d1", state="STOPPED")])  # old, late
        await peer.send("update", [entry("m", good_host, "d1")])  # a stale duplicate RUNNING
        await settle(peer)
        assert [(m.model_id, m.deployment_id, m.port) for m in client.models] == [
            ("m", "d2", toolbox_host.port)]
        results = await client.call("first", 5)  # only the toolbox (d2) has first()
        assert results["m"].ok and results["m"].deployment_id == "d2"
    redeployed = next(e for e in events if e.kind is EventKind.REDEPLOYED)
    assert redeployed.previous is not None and redeployed.previous.deployment_id == "d1"
    assert redeployed.model.deployment_id == "d2"


async def test_reconnect_with_a_smaller_init_removes_the_missing(
    peer: Peer, good_host: HostProcess, toolbox_host: HostProcess
) -> None:
    peer.init = [entry("a", good_host), entry("b", toolbox_host)]
    async with client_for(peer) as client:
        await client.wait_for_models(2, timeout=20)
        peer.init = [entry("b", toolbox_host)]
        await peer.drop()
        await until(lambda: ids(client) == {"b"})
        assert client.link is not None and client.link.connections == 2


async def test_a_link_dropped_mid_tick_does_not_disturb_the_tick(peer: Peer,
                                                                 toolbox_host: HostProcess) -> None:
    peer.init = [entry("t", toolbox_host)]
    async with client_for(peer) as client:
        await client.wait_for_models(1, timeout=20)
        tick = asyncio.ensure_future(client.call("sleep", 0.5))
        await asyncio.sleep(0.1)  # time passes: the tick is under way
        await peer.drop()
        results = await tick
        assert results["t"].ok
        assert ids(client) == {"t"}  # models held while the link is down
        await until(lambda: client.link is not None and client.link.connections == 2)
        await settle(peer)
        assert ids(client) == {"t"}  # and after the new init
        assert (await client.call("first", 1))["t"].ok


async def test_a_slow_to_connect_model_delays_no_update_and_no_tick(
    peer: Peer, good_host: HostProcess, toolbox_host: HostProcess
) -> None:
    # A listener that accepts connections and never speaks: Setup hangs there.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        peer.init = [entry("a", good_host), entry("b", toolbox_host)]
        async with client_for(peer, timeout=0.5, setup_timeout=30) as client:
            await client.wait_for_models(2, timeout=20)
            await peer.send("update", [entry("slow", silent.getsockname()[1])])
            await until(lambda: "slow" in client.model_ids())
            started = time.monotonic()
            await peer.send("update", [entry("a", good_host, state="STOPPED")])
            await until(lambda: ids(client) == {"b"}, timeout=5)
            # Promptly (milliseconds; the margin is for busy machines): the Setup hanging on
            # the silent listener would hold them for its 30 s.
            assert time.monotonic() - started < 3.0
            started = time.monotonic()
            results = await client.call("first", 1)
            assert time.monotonic() - started < 3.0
            assert results["b"].ok and "slow" not in results
            assert [m.model_id for m in client.pending] == ["slow"]


async def test_malformed_frames_are_skipped(peer: Peer, good_host: HostProcess,
                                            toolbox_host: HostProcess) -> None:
    peer.init = []
    async with client_for(peer) as client:
        await until(lambda: client.link is not None and client.link.connections == 1)
        for text in ["not json", "[1, 2]", '{"event": "update"}',
                     '{"event": "bogus", "data": []}',
                     '{"event": "update", "data": [{"model_id": "x"}]}',
                     '{"event": "update", "data": [{"model_id": "x", "deployment_id": "d", '
                     '"state": "RUNNING", "ip": "127.0.0.1", "port": "not a port"}]}',
                     '{"event": "update", "data": [7, null]}']:
            await peer.send_raw(text)
        # A string port and a hostname work.
        await peer.send("update", [entry("a", str(good_host.port), ip="localhost"),
                                   entry("b", toolbox_host)])
        await client.wait_for_models(2, timeout=20)
        assert client.link is not None and client.link.connections == 1  # never dropped


@pytest.mark.transport_independent
def test_parse_entry_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="lacks deployment_id, state"):
        parse_entry({"model_id": "x"})
    with pytest.raises(ValueError, match="unknown state"):
        parse_entry({"model_id": "x", "deployment_id": "d", "state": "DANCING"})
    with pytest.raises(ValueError, match="port"):
        parse_entry({"model_id": "x", "deployment_id": "d", "state": "RUNNING", "ip": "h",
                     "port": 0})
    assert parse_entry({"model_id": "x", "deployment_id": "d", "state": "STOPPED"}).port == 0


# --- failure reports ---

async def test_exactly_one_report_per_failing_deployment(peer: Peer, bad_host: HostProcess,
                                                         raising_host: HostProcess,
                                                         good_host: HostProcess) -> None:
    peer.init = [entry("bad", bad_host), entry("raising", raising_host), entry("good", good_host)]
    async with client_for(peer, max_consecutive_failures=2) as client:
        await client.wait_for_models(timeout=20)
        await until(lambda: peer.reports == [("bad", "BAD_IMPLEMENTATION")])
        # The orchestrator has not stopped it yet and announces it again: no second report.
        await peer.send("update", [entry("bad", bad_host)])
        for _ in range(4):
            await client.call("predict", "BTC", 1)
        await peer.drop()  # a reconnect and a fresh init repeating both
        await until(lambda: client.link is not None and client.link.connections == 2)
        await settle(peer)  # the fresh init is applied
        for _ in range(4):
            await client.call("predict", "BTC", 1)
        await settle(peer)  # every report made is delivered
    assert sorted(peer.reports) == [("bad", "BAD_IMPLEMENTATION"), ("raising", "MULTIPLE_FAILED")]
    item = next(i for m in peer.received for i in m["data"] if i["model_id"] == "raising")
    assert item["ip"] == "127.0.0.1" and "predict" in item["failure_reason"]


async def test_reports_wait_for_the_link(peer: Peer, raising_host: HostProcess,
                                         good_host: HostProcess) -> None:
    peer.init = [entry("raising", raising_host), entry("good", good_host)]
    async with client_for(peer, max_consecutive_failures=1) as client:
        await client.wait_for_models(2, timeout=20)
        peer.server.close()  # the orchestrator goes away...
        await peer.drop()
        await peer.server.wait_closed()
        await client.call("predict", "BTC", 1)  # ...while the model is disconnected
        assert ids(client) == {"good"}  # ticks go on with the models held
        assert peer.reports == []  # (nothing can reach a closed orchestrator)
        async with websockets.serve(peer.handler, "127.0.0.1", peer.port):
            await until(lambda: peer.reports == [("raising", "MULTIPLE_FAILED")])


async def test_report_failure_false_only_logs(peer: Peer, raising_host: HostProcess,
                                              caplog: pytest.LogCaptureFixture) -> None:
    peer.init = [entry("raising", raising_host)]
    async with client_for(peer, max_consecutive_failures=1, report_failure=False) as client:
        await client.wait_for_models(1, timeout=20)
        await client.call("predict", "BTC", 1)
        await until(lambda: "report_failure=False: not reporting" in caplog.text)
    assert peer.reports == []


async def test_the_coordinators_own_network_failure_is_not_blamed(peer: Peer) -> None:
    hosts = [HostProcess(TEST_SUBMISSIONS / "toolbox").start() for _ in range(2)]
    try:
        peer.init = [entry(f"m{i}", h) for i, h in enumerate(hosts)]
        async with client_for(peer, max_consecutive_timeouts=2, timeout=0.5) as client:
            await client.wait_for_models(2, timeout=20)
            for host in hosts:
                host.stop()  # every model unreachable at once
            for _ in range(6):
                results = await client.call("first", 1)
                assert all(r.status is CallStatus.TIMEOUT for r in results)
            await settle(peer)
            assert peer.reports == [] and ids(client) == {"m0", "m1"}
    finally:
        for host in hosts:
            host.stop()


@pytest.mark.transport_independent  # no model: only the websocket link
async def test_a_refusal_with_a_reason_is_shown_and_backed_off(
        caplog: pytest.LogCaptureFixture) -> None:
    """A wrong crunch id: the orchestrator says why and closes. The client once reconnected every
    ~0.4 s forever with a WARNING each time; now it backs off, logs the reason once, and
    wait_for_models' error carries it."""
    import logging

    from model_runner.local_orchestrator import LocalOrchestrator
    from model_runner_client import ModelRunnerClient
    from tests.hosts import BASE

    async with LocalOrchestrator("local", []) as orchestrator:
        client = ModelRunnerClient("bird", "127.0.0.1", orchestrator.port, base_classname=BASE)
        with caplog.at_level(logging.DEBUG, logger="model_runner_client.orchestrator"):
            async with client:
                with pytest.raises(TimeoutError) as waited:
                    await client.wait_for_models(timeout=4)
    assert "unknown crunch 'bird'; this is 'local'" in str(waited.value)
    assert "check crunch_id" in str(waited.value)
    refusals = [r for r in caplog.records if "closed the link" in r.getMessage()]
    assert [r.levelno for r in refusals[:1]] == [logging.WARNING]
    assert all(r.levelno == logging.DEBUG for r in refusals[1:])
    assert 2 <= len(refusals) <= 5  # backoff 0.5 s doubling with jitter over 4 s (was ~10)


@given(st.integers(0, 40), st.floats(0.01, 5), st.floats(5, 120))
def test_the_link_backs_off_doubling_capped_with_jitter(attempt: int, initial: float,
                                                        maximum: float) -> None:
    delay = backoff_delay(attempt, initial, maximum)
    full = min(maximum, initial * 2 ** attempt)
    assert full / 2 <= delay <= full <= maximum


def test_jitter_spreads_reconnects() -> None:
    delays = {round(backoff_delay(3, 0.5, 30.0), 6) for _ in range(50)}
    assert len(delays) > 40  # not all clients at once


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
