"""ModelRunnerClient against real `python -m model_runner` subprocesses."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import model_runner_client.client as client_module
from model_runner.wire import DynamicSubclassServiceStub
from model_runner_client import (
    ArgumentError,
    CallStatus,
    EventKind,
    FailureReport,
    ModelEndpoint,
    ModelEvent,
    ModelRunnerClient,
    UnknownModelError,
)
from tests import clients
from tests.clients import ScriptedSource, address_client, free_port, hostile, models_at
from tests.hosts import (
    BASE,
    SUBMISSIONS,
    TEST_SUBMISSIONS,
    HostProcess,
    reported,
    runs_again,
    until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


def endpoint(host: HostProcess, model_id: str, deployment: str = "d1") -> ModelEndpoint:
    """A model with the orchestrator's metadata, which results carry."""
    return clients.endpoint(host, model_id, deployment, model_name=f"{model_id}-name",
                            cruncher_id=f"{model_id}-cid", cruncher_name=f"{model_id}-cruncher")


@pytest.fixture
async def two_models(good_host: HostProcess,
                     toolbox_host: HostProcess) -> AsyncIterator[ModelRunnerClient]:
    async with address_client([endpoint(good_host, "good"), endpoint(toolbox_host, "tool")]) as c:
        await c.wait_for_models(2, timeout=20)
        yield c


# --- basics ---

async def test_tick_and_predict(two_models: ModelRunnerClient) -> None:
    client = two_models
    assert {m.model_id for m in client.models} == {"good", "tool"}
    ticks = await client.call("tick", {"BTC": 100.0})
    assert [r.status for r in ticks] == [CallStatus.SUCCESS] * 2
    results = await client.call("predict", "BTC", 2, kwargs={"step": 1}, returns=list[float])
    good = results["good"]
    assert good.status is CallStatus.SUCCESS and good.output == [100.0, 100.0]
    assert results["tool"].output == [1.0, 1.0]
    assert (good.model_name, good.cruncher_id, good.cruncher_name, good.deployment_id) == (
        "good-name", "good-cid", "good-cruncher", "d1")
    assert good.latency_us > 0 and good.detail == ""
    assert len(results) == 2 and "good" in results and results.outputs.keys() == {"good", "tool"}


async def test_from_plain_addresses(good_host: HostProcess) -> None:
    async with address_client([good_host.address]) as client:
        models = await client.wait_for_models(timeout=20)
        assert [m.model_id for m in models] == [good_host.address]
        results = await client.call("predict", "BTC", 1)
        assert results[good_host.address].status is CallStatus.SUCCESS


async def test_failure_statuses_carry_details(two_models: ModelRunnerClient,
                                              raising_host: HostProcess) -> None:
    results = await two_models.call("fail", "nope", models=["tool"])
    assert results["tool"].status is CallStatus.FAILURE
    assert "MODEL_FAILED" in results["tool"].detail and "ValueError: nope" in results["tool"].detail
    results = await two_models.call("no_such_method", models=["good"])
    assert results["good"].status is CallStatus.FAILURE
    assert "BAD_IMPLEMENTATION" in results["good"].detail
    results = await two_models.call("echo", "text", models=["tool"], returns=list[float])
    assert results["tool"].status is CallStatus.FAILURE
    assert "does not match" in results["tool"].detail
    results = await two_models.call("unencodable", models=["tool"])
    assert "could not be encoded" in results["tool"].detail


async def test_returns_converts_and_validates(two_models: ModelRunnerClient) -> None:
    results = await two_models.call("first", 3, models=["tool"], returns=float)
    assert results["tool"].output == 3.0 and isinstance(results["tool"].output, float)
    results = await two_models.call("first", {"a": [1, 2]}, models=["tool"],
                                    returns=dict[str, list[int]])
    assert results["tool"].output == {"a": [1, 2]}


async def test_per_model_arguments(two_models: ModelRunnerClient) -> None:
    results = await two_models.call(
        "first", per_model=lambda model: ([model.model_id.upper()], None), models=["tool"])
    assert results["tool"].output == "TOOL"


async def test_models_empty_calls_nobody(two_models: ModelRunnerClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(await two_models.call("predict", "BTC", 1, models=[])) == 0


async def test_coordinator_mistakes_raise_before_sending(two_models: ModelRunnerClient) -> None:
    with pytest.raises(UnknownModelError, match="never held"):
        await two_models.call("predict", "BTC", 1, models=["good", "who?"])
    with pytest.raises(ArgumentError, match="positional argument 1"):
        await two_models.call("predict", "BTC", object())
    with pytest.raises(ArgumentError, match="int64"):
        await two_models.call("predict", "BTC", 2**80)
    with pytest.raises(ArgumentError, match=r"per_model arguments for good: .*bytes"):
        await two_models.call("first", per_model=lambda m: ([b"raw"], None))
    # Nothing was counted against the models.
    assert {m.model_id for m in two_models.models} == {"good", "tool"}


async def test_shared_arguments_are_encoded_once(two_models: ModelRunnerClient,
                                                 good_host: HostProcess,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    many = [endpoint(good_host, f"m{i}") for i in range(20)]
    encoded: list[bytes] = []
    real = client_module.encode_call

    def spy(*args: Any) -> bytes:
        encoded.append(real(*args))
        return encoded[-1]

    monkeypatch.setattr(client_module, "encode_call", spy)
    async with address_client(many) as client:
        await client.wait_for_models(20, timeout=20)
        results = await client.call("predict", "BTC", 1)
    assert len(results) == 20 and all(r.ok for r in results)
    assert len(encoded) == 1


async def test_use_before_start_is_a_clear_error(good_host: HostProcess) -> None:
    client = address_client([good_host.address])
    with pytest.raises(RuntimeError, match="async with"):
        await client.call("predict", "BTC", 1)


# --- deadlines ---

async def test_call_returns_within_the_deadline_however_models_hang(
    toolbox_host: HostProcess, good_host: HostProcess
) -> None:
    hangers = [HostProcess(TEST_SUBMISSIONS / "toolbox").start() for _ in range(3)]
    try:
        models = [endpoint(h, f"hang{i}") for i, h in enumerate(hangers)]
        models.append(endpoint(good_host, "good"))
        models.append(ModelEndpoint("nobody", "127.0.0.1", free_port(), "d"))  # refuses
        async with address_client(models, timeout=0.5, connect_attempts=1) as client:
            await client.wait_for_models(4, timeout=20)
            started = time.monotonic()
            results = await client.call(
                "sleep", per_model=lambda m: ([30.0] if m.model_id.startswith("hang") else [0.0],
                                              None))
            elapsed = time.monotonic() - started
            # The deadline is 0.5 s; the margin is generous for 2 busy cores (exact figures:
            # benchmarks), and far below the 30 s the hanging models would take.
            assert elapsed < 0.5 + 1.5, elapsed
            for i in range(3):
                assert results[f"hang{i}"].status is CallStatus.TIMEOUT
                assert "no answer" in results[f"hang{i}"].detail
            assert results["good"].status is CallStatus.FAILURE  # good_tracker has no sleep()
            assert "nobody" not in results  # never set up, never targeted
    finally:
        for host in hangers:
            host.stop()


async def test_an_abandoned_call_runs_to_its_end_and_the_connection_stays_usable(
        toolbox_host: HostProcess) -> None:
    """The deadline resets the stream (RST_STREAM CANCEL); the model's code runs to its end
    (README) while calls meanwhile are answered busy at once, and the same connection serves
    the first call after it."""
    async with address_client([endpoint(toolbox_host, "tool")], timeout=0.3,
                              max_consecutive_timeouts=1000) as client:
        await client.wait_for_models(1, timeout=20)
        results = await client.call("async_sleep", 1.5)
        assert results["tool"].status is CallStatus.TIMEOUT
        skipped = await client.call("first", 1, timeout=5.0)
        assert skipped["tool"].detail.startswith("skipped while cooling down")
        busy = (await client.call("first", 1, timeout=5.0))["tool"]
        assert busy.status is CallStatus.TIMEOUT, busy.detail
        assert busy.detail.startswith("the model is still running an earlier call"), busy.detail
        assert busy.latency_us < 1_000_000  # answered at once, not at its 5 s deadline

        async def runs_again() -> bool:  # a busy answer sets no cooling down: every tick asks
            return (await client.call("first", 1, timeout=5.0))["tool"].ok

        await until(runs_again)


async def test_a_process_exiting_mid_call(good_host: HostProcess) -> None:
    dying = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    try:
        async with address_client([endpoint(dying, "dying"), endpoint(good_host, "good")],
                               timeout=2.0) as client:
            await client.wait_for_models(2, timeout=20)
            results = await client.call("kill", models=["dying"])
            assert results["dying"].status is CallStatus.TIMEOUT
            assert "unreachable" in results["dying"].detail
            results = await client.call("predict", "BTC", 1)
            assert results["good"].status is CallStatus.SUCCESS
            assert results["dying"].status is CallStatus.TIMEOUT
    finally:
        dying.stop()


async def test_bound_on_calls_in_flight(toolbox_host: HostProcess) -> None:
    hosts = [HostProcess(TEST_SUBMISSIONS / "toolbox").start() for _ in range(3)]
    try:
        models = [endpoint(h, f"m{i}") for i, h in enumerate(hosts)]
        async with address_client(models, timeout=0.8, max_concurrent_calls=1) as client:
            await client.wait_for_models(3, timeout=20)
            # One call at a time: the first answers at 0.5 s, the second is still running at
            # the 0.8 s deadline, the third was never sent.
            results = await client.call("sleep", 0.5)
            details = sorted(r.detail for r in results)
            assert [r.status for r in results].count(CallStatus.SUCCESS) == 1, details
            assert sum("max_concurrent_calls" in d for d in details) == 1, details
            assert sum("no answer" in d for d in details) == 1, details
    finally:
        for host in hosts:
            host.stop()


# --- failure policy ---

async def test_consecutive_failures_disconnect_and_report_once(
    raising_host: HostProcess, good_host: HostProcess
) -> None:
    reports: list[FailureReport] = []
    events: list[ModelEvent] = []
    async with address_client([endpoint(raising_host, "bad"), endpoint(good_host, "good")],
                           max_consecutive_failures=2, on_failure=reports.append,
                           on_event=events.append) as client:
        await client.wait_for_models(2, timeout=20)
        assert (await client.call("predict", "BTC", 1))["bad"].status is CallStatus.FAILURE
        await client.call("tick", {"BTC": 1.0})  # succeeds, but says nothing about predict
        assert len(client.models) == 2
        results = await client.call("predict", "BTC", 1)
        assert results["bad"].status is CallStatus.FAILURE
        assert [m.model_id for m in client.models] == ["good"]
        results = await client.call("predict", "BTC", 1)
        assert "bad" not in results and results["good"].ok
        # Naming a departed model is not an error: it answers that the model left.
        results = await client.call("predict", "BTC", 1, models=["bad"])
        assert results["bad"].status is CallStatus.FAILURE and "left" in results["bad"].detail
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("bad", "MULTIPLE_FAILED")]
    assert "2 failures of predict in a row" in reports[0].reason
    left = [e for e in events if e.kind is EventKind.LEFT]
    assert [e.model.model_id for e in left] == ["bad"]


async def test_a_timeout_cools_down_then_busy_answers_disconnect(toolbox_host: HostProcess,
                                                          good_host: HostProcess) -> None:
    hanger = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    reports: list[FailureReport] = []
    try:
        async with address_client([endpoint(hanger, "hang"), endpoint(good_host, "good")],
                               timeout=0.3, max_consecutive_timeouts=3,
                               on_failure=reports.append) as client:
            await client.wait_for_models(2, timeout=20)
            details = []
            for _ in range(6):
                results = await client.call("async_sleep", 10.0, models=["hang"])
                details.append(results["hang"].detail)
            # timeout, skip 1, then busy answers (timeouts that set no cooling down) while the
            # first call still runs: the third timeout in a row disconnects; then not called.
            kinds = [("skipped" if d.startswith("skipped while cooling down") else
                      "busy" if d.startswith("the model is still running an earlier call") else
                      "left" if d == "not called: the model has left" else
                      "timeout" if d.startswith("no answer") else d) for d in details]
            assert kinds == ["timeout", "skipped", "busy", "busy", "left", "left"], details
            assert "hang" not in {m.model_id for m in client.models}
            await until(lambda: bool(reports))
        assert [(r.model.model_id, r.code) for r in reports] == [("hang", "MULTIPLE_TIMEOUT")]
    finally:
        hanger.stop()


async def test_bad_implementation_at_setup_is_dropped_and_reported(
    bad_host: HostProcess, good_host: HostProcess
) -> None:
    reports: list[FailureReport] = []
    async with address_client([endpoint(bad_host, "bad"), endpoint(good_host, "good")],
                           on_failure=reports.append) as client:
        await client.wait_for_models(timeout=20)
        assert [m.model_id for m in client.models] == ["good"]
        await until(lambda: bool(reports))
    assert [(r.model.model_id, r.code) for r in reports] == [("bad", "BAD_IMPLEMENTATION")]
    assert "no class" in reports[0].reason


async def test_a_host_that_lost_its_instance_is_set_up_again(toolbox_host: HostProcess) -> None:
    async with address_client([endpoint(toolbox_host, "tool")]) as client:
        await client.wait_for_models(1, timeout=20)
        async with toolbox_host.channel() as channel:
            await DynamicSubclassServiceStub(channel).rest()  # as if the host had restarted
        results = await client.call("first", 1)
        assert results["tool"].status is CallStatus.TIMEOUT  # not answered; not its fault
        assert "no model instance (it restarted" in results["tool"].detail
        async def set_up_again() -> bool:
            return (await client.call("first", 2))["tool"].ok

        await until(set_up_again)
        assert (await client.call("first", 3))["tool"].output == 3


async def test_setup_retries_until_the_host_is_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    def retries() -> int:
        return sum("retrying in" in r.getMessage() for r in caplog.records)

    caplog.set_level(logging.INFO, logger="model_runner_client")
    async with address_client([f"127.0.0.1:{port}"], connect_attempts=20) as client:
        await until(lambda: retries() >= 2)  # Setup failed twice: still pending, no error
        assert client.models == [] and len(client.pending) == 1
        host = HostProcess(TEST_SUBMISSIONS / "toolbox", port=port).start()
        try:
            await client.wait_for_models(1, timeout=30)
            assert (await client.call("first", 1))[0].ok
        finally:
            host.stop()


async def test_wait_for_models_times_out_with_a_clear_message() -> None:
    async with address_client([f"127.0.0.1:{free_port()}"], connect_attempts=50) as client:
        with pytest.raises(TimeoutError, match="0 ready, 1 still connecting"):
            await client.wait_for_models(1, timeout=0.5)


# --- events and closing ---

async def test_events_as_an_async_iterator(good_host: HostProcess) -> None:
    source = ScriptedSource([endpoint(good_host, "a"), endpoint(good_host, "b")])
    client = ModelRunnerClient(source=source, base_classname=BASE, timeout=2.0)
    async with client:
        events = client.events()
        seen = [await anext(events), await anext(events)]
        assert {(e.kind, e.model.model_id) for e in seen} == {
            (EventKind.JOINED, "a"), (EventKind.JOINED, "b")}
        source.registry.remove("a", "test says so")
        event = await anext(events)
        assert (event.kind, event.model.model_id, event.reason) == (
            EventKind.LEFT, "a", "test says so")
        source.registry.upsert(endpoint(good_host, "b", deployment="d2"))
        event = await anext(events)
        assert event.kind is EventKind.REDEPLOYED and event.model.deployment_id == "d2"
        assert event.previous is not None and event.previous.deployment_id == "d1"
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_close_leaves_no_task_or_socket(good_host: HostProcess,
                                              toolbox_host: HostProcess, tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before_fds = open_fds()
    before_tasks = len(asyncio.all_tasks())
    client = address_client([endpoint(good_host, "good"), endpoint(toolbox_host, "tool"),
                          ModelEndpoint("nobody", "127.0.0.1", free_port(), "d")],
                         connect_attempts=100, timeout=5.0)
    await client.start()
    await client.wait_for_models(2, timeout=20)
    mark = tmp_path / "in-flight"
    in_flight = asyncio.ensure_future(client.call("sleep", 1.5, kwargs={"mark": str(mark)},
                                                  models=["tool"]))
    await until(mark.exists)  # the call is under way on the host
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 1.0  # promptly: the call in flight sleeps 1.5 s
    # The call in flight ends promptly too, with a clean status.
    results = await asyncio.wait_for(in_flight, 1.0)
    assert results["tool"].status is CallStatus.TIMEOUT
    await until(lambda: len(asyncio.all_tasks()) == before_tasks)
    assert open_fds() <= before_fds
    await client.close()  # twice is fine
    async with toolbox_host.channel() as channel:  # leave the shared host idle for the next test
        await runs_again(DynamicSubclassServiceStub(channel))


async def test_a_response_over_the_client_limit_is_a_failure(toolbox_host: HostProcess) -> None:
    async with address_client([endpoint(toolbox_host, "tool")],
                           max_receive_message_length=100_000) as client:
        await client.wait_for_models(1, timeout=20)
        results = await client.call("big", 5_000_000)
        assert results["tool"].status is CallStatus.FAILURE
        assert "over the client's max_receive_message_length" in results["tool"].detail
        assert (await client.call("big", 1000))["tool"].output == "x" * 1000  # still usable


async def test_sigterm_to_a_host_during_a_tick(good_host: HostProcess, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The tick in flight gets its answer from the draining host; later ticks get clean
    statuses, and nothing is reported for a host that stopped on purpose."""
    stopping = HostProcess(TEST_SUBMISSIONS / "toolbox", "--grace-period", "5").start()
    reports: list[FailureReport] = []
    try:
        async with address_client([endpoint(stopping, "stopping"), endpoint(good_host, "good")],
                               timeout=3.0, on_failure=reports.append) as client:
            await client.wait_for_models(2, timeout=20)
            mark = tmp_path / "in-flight"
            tick = asyncio.ensure_future(client.call(
                "sleep", per_model=lambda m: (([0.8], {"mark": str(mark)})
                                              if m.model_id == "stopping" else ([0.0], None))))
            await until(mark.exists)  # the tick is in flight on the stopping host
            stopping.signal()
            results = await tick
            assert results["stopping"].status is CallStatus.SUCCESS
            assert results["stopping"].output == 0.8
            assert await asyncio.to_thread(stopping.wait, 10) == 0
            results = await client.call("predict", "BTC", 1)
            assert results["good"].ok
            assert results["stopping"].status is CallStatus.TIMEOUT
            assert results["stopping"].detail.startswith(("unreachable", "gRPC UNAVAILABLE"))
    finally:
        stopping.stop()
    assert reported(caplog) == []


async def test_warns_when_models_near_the_open_file_limit(
        caplog: pytest.LogCaptureFixture) -> None:
    import resource

    # 150 "models" on one host: past the host's default cap of 64 connections.
    host = HostProcess(SUBMISSIONS / "good_tracker", "--max-connections", "512").start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        async with address_client([endpoint(host, f"m{i}") for i in range(150)]) as client:
            await client.wait_for_models(150, timeout=60)
        assert caplog.text.count("near this process's limit of 200 open files") == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        host.stop()


async def test_closing_with_calls_in_flight_blames_no_network(
        toolbox_host: HostProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Every call ends unreachable when the client closes under them: that is no sign of the
    coordinator's network being down."""
    client = address_client([endpoint(toolbox_host, "one"), endpoint(toolbox_host, "two")],
                         timeout=5.0)
    await client.start()
    await client.wait_for_models(2, timeout=20)
    mark = tmp_path / "in-flight"
    in_flight = asyncio.ensure_future(client.call("sleep", 1.5, kwargs={"mark": str(mark)}))
    await until(mark.exists)  # under way: one runs on the host, the other waits its turn
    await client.close()
    results = await asyncio.wait_for(in_flight, 2.0)
    assert [r.status for r in results] == [CallStatus.TIMEOUT, CallStatus.TIMEOUT]
    assert "network is likely down" not in caplog.text
    # The 1.5 s sleep runs on: leave the shared host idle, or the next test (this one on the other
    # transport) finds every call answered busy and never sees its mark.
    async with toolbox_host.channel() as channel:
        await runs_again(DynamicSubclassServiceStub(channel))


async def test_at_most_64_models_are_set_up_at_once() -> None:
    """200 models on a host that holds each Setup 0.3 s: they all get set up, never more than
    64 Setups at once (the host counts them across its connections), and not one by one; on
    each transport."""
    with hostile("slow-setup") as port:
        async with address_client(models_at(port, 200), setup_timeout=20) as client:
            await client.wait_for_models(200, timeout=60)
            most = (await client.call("predict", models=["m0"]))["m0"].output
    assert 16 <= most <= 64, most  # README: "At most 64 models are set up at once"
