"""Calls off the event loop, one at a time; health; SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from model_runner.wire import SERVICE_NAME, DynamicSubclassServiceStub
from tests.hosts import SUBMISSIONS, TEST_SUBMISSIONS, HostProcess, call, ok, set_up, until

pytestmark = pytest.mark.anyio

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


async def health(channel: Channel, service: str = "") -> int:
    response = await HealthStub(channel).Check(HealthCheckRequest(service=service), timeout=5)
    assert response is not None
    return int(response.status)


@pytest.fixture
async def toolbox(toolbox_host: HostProcess) -> AsyncIterator[DynamicSubclassServiceStub]:
    async with toolbox_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await stub.rest()
        await set_up(stub)
        yield stub


async def test_health_answers_while_a_sync_model_computes(
    toolbox_host: HostProcess, toolbox: DynamicSubclassServiceStub
) -> None:
    async with toolbox_host.channel() as channel:
        slow = asyncio.ensure_future(call(toolbox, "sleep", 2.0))
        await asyncio.sleep(0.3)  # time passes: the model is computing
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


@pytest.mark.parametrize("method", ["sleep", "async_sleep"])
async def test_a_timed_out_call_runs_to_completion_and_holds_its_turn(
    toolbox: DynamicSubclassServiceStub, method: str,
) -> None:
    """`def` and `async def` alike: a cancelled coroutine once left model state half-updated."""
    await ended_by_its_deadline(call(toolbox, method, 0.8, tag="abandoned", timeout=0.2))
    started = time.monotonic()
    await ok(toolbox, method, 0.0, tag="next")
    assert time.monotonic() - started > 0.3  # waited for the abandoned call to finish
    stats = await ok(toolbox, "stats")
    assert stats["order"] == ["abandoned", "next"] and stats["max_active"] == 1


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


async def test_grace_period_is_bounded() -> None:
    host = HostProcess(TEST_SUBMISSIONS / "toolbox", "--grace-period", "0.5").start()
    try:
        async with host.channel() as channel:
            stub = DynamicSubclassServiceStub(channel)
            await set_up(stub)
            stuck = asyncio.ensure_future(call(stub, "sleep", 30.0, timeout=None))
            await asyncio.sleep(0.3)  # time passes: the call is in flight
            started = time.monotonic()
            host.signal(signal.SIGINT)
            assert await asyncio.to_thread(host.wait, 10) == 0
            assert time.monotonic() - started < 5  # grace 0.5 s, generous margin
            with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
                await asyncio.wait_for(stuck, 10)  # a hang fails (TimeoutError is not caught)
    finally:
        host.stop()
