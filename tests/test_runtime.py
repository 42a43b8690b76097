"""Calls off the event loop, one at a time; health; SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from model_runner.wire import SERVICE_NAME, DynamicSubclassServiceStub, SetupRequest
from tests.hosts import (
    BASE,
    SUBMISSIONS,
    TEST_SUBMISSIONS,
    HostProcess,
    call,
    ok,
    runs_again,
    set_up,
    until,
)

pytestmark = pytest.mark.anyio

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


async def health(channel: Channel, service: str = "") -> int:
    response = await HealthStub(channel).Check(HealthCheckRequest(service=service), timeout=5)
    assert response is not None
    return int(response.status)


async def test_health_answers_while_a_sync_model_computes(
    toolbox_host: HostProcess, toolbox: DynamicSubclassServiceStub, tmp_path: Path
) -> None:
    async with toolbox_host.channel() as channel:
        mark = tmp_path / "computing"
        slow = asyncio.ensure_future(call(toolbox, "sleep", 2.0, mark=str(mark)))
        await until(mark.exists)  # the model is computing
        assert not slow.done()
        worst = 0.0
        for _ in range(10):
            started = time.perf_counter()
            assert await health(channel) == SERVING
            worst = max(worst, time.perf_counter() - started)
        # Milliseconds in practice; the bound is generous for shared machines, and below the
        # 1.7 s a health check held by the computation would take.
        assert worst < 1.0, worst
        assert not slow.done()
        assert (await slow)[0] == "SUCCESS"


async def test_calls_never_overlap_and_keep_their_order(
    toolbox: DynamicSubclassServiceStub,
) -> None:
    results = await asyncio.gather(*(call(toolbox, "sleep", 0.05, tag=i) for i in range(8)))
    assert all(code == "SUCCESS" for code, _, _ in results)
    stats = await ok(toolbox, "stats")
    assert stats["max_active"] == 1
    assert stats["order"] == list(range(8))


async def ended_by_its_deadline(pending: Awaitable[Any]) -> None:
    """The deadline ends a call on whichever side sees it first: the client's own timer
    (TimeoutError) or the host's, which answers DEADLINE_EXCEEDED (each seen under load)."""
    with pytest.raises((TimeoutError, GRPCError)) as ended:
        await pending
    assert isinstance(ended.value, TimeoutError) or (
        ended.value.status is GrpcStatus.DEADLINE_EXCEEDED), ended.value


async def test_a_call_whose_deadline_passed_while_waiting_is_not_run(
    toolbox: DynamicSubclassServiceStub, tmp_path: Path,
) -> None:
    mark = tmp_path / "blocking"
    blocker = asyncio.ensure_future(call(toolbox, "sleep", 1.0, tag="blocker", mark=str(mark)))
    await until(mark.exists)  # the blocker holds the model
    await ended_by_its_deadline(call(toolbox, "sleep", 0.0, tag="expired", timeout=0.3))
    await blocker
    await ok(toolbox, "sleep", 0.0, tag="after")
    assert (await ok(toolbox, "stats"))["order"] == ["blocker", "after"]


@pytest.mark.parametrize("method", ["sleep", "async_sleep", "spin", "async_spin"])
async def test_a_timed_out_call_runs_to_completion_and_calls_meanwhile_are_answered_busy(
    toolbox_host: HostProcess, toolbox: DynamicSubclassServiceStub, method: str,
) -> None:
    """A cancelled coroutine once left model state half-updated, so an abandoned call still
    runs to its end; but nobody waits for it, so calls that arrive meanwhile are answered
    RESOURCE_EXHAUSTED "Server busy" at once (they once waited their own deadline behind it),
    and health stays answered (an `async def` that spins once held the host's loop)."""
    await ended_by_its_deadline(call(toolbox, method, 1.5, tag="abandoned", timeout=0.2))
    started = time.monotonic()
    with pytest.raises(GRPCError) as busy:
        await call(toolbox, method, 0.0, tag="refused", timeout=5)
    assert time.monotonic() - started < 0.5  # at once, not after the abandoned call
    assert busy.value.status is GrpcStatus.RESOURCE_EXHAUSTED
    assert busy.value.message is not None and busy.value.message.startswith(
        f"Server busy: the model is still running {method}, started "), busy.value.message
    async with toolbox_host.channel() as channel:
        started = time.monotonic()
        assert await health(channel) == SERVING
        assert time.monotonic() - started < 0.5
    # Once the abandoned call returns, calls run again, one at a time.
    await runs_again(toolbox, method, 0.0, tag="next")
    stats = await ok(toolbox, "stats")
    assert stats["order"] == ["abandoned", "next"] and stats["max_active"] <= 1


async def test_calls_behind_a_live_call_keep_their_turn(
    toolbox: DynamicSubclassServiceStub, tmp_path: Path,
) -> None:
    """Only an abandoned call makes others busy: behind one whose caller waits, calls queue."""
    mark = tmp_path / "live"
    live = asyncio.ensure_future(call(toolbox, "sleep", 0.5, tag="live", mark=str(mark)))
    await until(mark.exists)
    queued = [asyncio.ensure_future(call(toolbox, "sleep", 0.0, tag=i)) for i in range(3)]
    assert (await live)[0] == "SUCCESS"
    assert [code for code, _, _ in await asyncio.gather(*queued)] == ["SUCCESS"] * 3
    assert (await ok(toolbox, "stats"))["order"] == ["live", 0, 1, 2]


async def test_calls_waiting_when_the_running_call_is_abandoned_are_answered_busy(
    toolbox: DynamicSubclassServiceStub, tmp_path: Path,
) -> None:
    mark = tmp_path / "running"
    running = asyncio.ensure_future(call(toolbox, "sleep", 1.5, tag="abandoned", mark=str(mark),
                                         timeout=0.5))
    await until(mark.exists)
    waiting = asyncio.ensure_future(call(toolbox, "sleep", 0.0, tag="waiting", timeout=10))
    await ended_by_its_deadline(running)
    started = time.monotonic()
    with pytest.raises(GRPCError) as busy:
        await waiting
    assert busy.value.status is GrpcStatus.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 0.5  # when the call ahead was abandoned, not after it
    await runs_again(toolbox, "stats")


async def test_setup_is_answered_at_once_while_the_model_is_stuck(
    toolbox: DynamicSubclassServiceStub,
) -> None:
    """A coordinator that restarts sets the model up again while it is stuck on an abandoned
    call (model-runner-client 0.14 gave up after its 120 s Setup timeout)."""
    await ended_by_its_deadline(call(toolbox, "sleep", 1.5, timeout=0.2))
    started = time.monotonic()
    response = await toolbox.setup(SetupRequest(class_name=BASE), timeout=5)
    assert response.status is not None and response.status.code == "SUCCESS"
    assert time.monotonic() - started < 0.5
    await runs_again(toolbox, "stats")


async def test_async_model(toolbox: DynamicSubclassServiceStub) -> None:
    assert await ok(toolbox, "async_sleep", 0.01) == 0.01
    host = HostProcess(SUBMISSIONS / "async_tracker").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            await ok(stub, "tick", {"ETH": 3.5})
            assert await ok(stub, "predict", "ETH", 2) == [3.5, 3.5]
    finally:
        host.stop()


async def test_health_of_the_model_service_follows_setup_and_rest(
    toolbox_host: HostProcess,
) -> None:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        assert await health(channel) == SERVING
        assert await health(channel, SERVICE_NAME) == NOT_SERVING
        watch = HealthStub(channel).Watch.open()
        async with watch as stream:
            await stream.send_message(HealthCheckRequest(service=SERVICE_NAME), end=True)
            first = await stream.recv_message()
            assert first is not None and first.status == NOT_SERVING
            await set_up(stub)
            assert await health(channel, SERVICE_NAME) == SERVING
            changed = await asyncio.wait_for(stream.recv_message(), 5)
            assert changed is not None and changed.status == SERVING
            await stub.rest()
            changed = await asyncio.wait_for(stream.recv_message(), 5)
            assert changed is not None and changed.status == NOT_SERVING
            await stream.cancel()
        with pytest.raises(GRPCError) as unknown:
            await HealthStub(channel).Check(HealthCheckRequest(service="nope"))
        assert unknown.value.status is GrpcStatus.NOT_FOUND


async def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox", "--grace-period", "5").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            mark = tmp_path / "running"
            in_flight = asyncio.ensure_future(call(stub, "sleep", 1.0, mark=str(mark)))
            await until(mark.exists)  # the call is in flight
            host.signal(signal.SIGTERM)

            async def draining() -> bool:
                return await health(channel) == NOT_SERVING

            await until(draining)
            assert await health(channel, SERVICE_NAME) == NOT_SERVING
            with pytest.raises(GRPCError) as refused:
                await call(stub, "first", 1)
            assert refused.value.status is GrpcStatus.UNAVAILABLE
            assert "shutting down" in str(refused.value.message)
            code, _, value = await in_flight  # the answer reaches the client
            assert (code, value) == ("SUCCESS", 1.0)
        assert await asyncio.to_thread(host.wait, 10) == 0
    finally:
        host.stop()


async def test_grace_period_is_bounded(tmp_path: Path) -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox", "--grace-period", "0.5").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            mark = tmp_path / "in-flight"
            stuck = asyncio.ensure_future(call(stub, "sleep", 30.0, timeout=None,
                                               mark=str(mark)))
            await until(mark.exists)  # the call is in flight
            started = time.monotonic()
            host.signal(signal.SIGINT)
            assert await asyncio.to_thread(host.wait, 10) == 0
            assert time.monotonic() - started < 5  # grace 0.5 s, generous margin
            with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
                await asyncio.wait_for(stuck, 10)  # a hang fails (TimeoutError is not caught)
    finally:
        host.stop()


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
