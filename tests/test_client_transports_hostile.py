"""Hosts that turn HTTP/2 against the client (tests/hostile_host.py, its own process): each costs
only its own model, on both transports."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import anyio
import pytest

from model_runner_client import CallStatus
from tests.clients import address_client, hostile, models_at, start_fast_server
from tests.hosts import reported, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]


def open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone already)
            count += os.readlink(fd).startswith("socket:")
    return count


async def test_a_host_that_sends_goaway_after_every_answer_leaks_no_socket() -> None:
    """ngh2 once left a socket open per GOAWAY: 31 after 50 ticks, still open after close()."""
    with hostile("goaway-each") as port:
        before = open_sockets()
        async with address_client(models_at(port, 1)) as client:
            await client.wait_for_models(1, timeout=20)
            for tick in range(50):
                result = (await client.call("predict"))[0]
                assert result.ok, (tick, result.detail)
            assert open_sockets() - before <= 3  # the live connection (and one closing)
        await until(lambda: open_sockets() <= before)


@pytest.mark.parametrize("mode", ["answer-then-goaway", "goaway-then-answer"])
async def test_answers_to_the_calls_a_goaway_kept_are_kept(
        mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """On grpclib a GOAWAY in the same write as the answer before it ended that call, and h2
    refused an answer after a GOAWAY that kept its call ('Protocol error'): the model was
    reported CONNECTION_FAILED after three."""
    with hostile(mode) as port:
        async with address_client(models_at(port, 1)) as client:
            await client.wait_for_models(1, timeout=20)
            for tick in range(5):
                result = (await client.call("predict"))[0]
                assert result.ok and result.output == 1.0, (tick, result.detail)
    assert reported(caplog) == []


async def test_the_trailers_status_wins_on_both_transports() -> None:
    with hostile("contradicting-status") as port:
        async with address_client(models_at(port, 1)) as client:
            await client.wait_for_models(1, timeout=20)
            result = (await client.call("predict"))[0]
    assert result.ok and result.output == 1.0, result.detail


async def test_a_message_that_is_not_utf8_logs_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    with hostile("bad-utf8-message") as port:
        async with address_client(models_at(port, 1)) as client:
            await client.wait_for_models(1, timeout=20)
            with caplog.at_level(logging.DEBUG):
                for _ in range(3):
                    result = (await client.call("predict"))[0]
                    assert result.status is CallStatus.FAILURE
                    assert "INTERNAL" in result.detail and "bad" in result.detail
    assert not [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()]


async def test_a_host_flooding_pings_it_never_reads_loses_its_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    """Unread PING acks piled up in the client without a cap (~3-5 MB/s). On ngh2, nghttp2's
    own limit (max_outbound_ack) may end a burst first."""
    with hostile("ping-flood") as port:
        async with address_client(models_at(port, 1), max_consecutive_timeouts=100) as client:
            await client.wait_for_models(1, timeout=20)
            with caplog.at_level(logging.INFO, logger="model_runner_client.transports"):
                # The flood starts after this answer; on ngh2 it may arrive in the same read
                # and end the call with the connection, so its result is not asserted.
                await client.call("predict")
                await until(lambda: "read none of the acks" in caplog.text
                            or "FLOOD" in caplog.text.upper(), 20)


async def honest_beside_hostile(mode: str, hostile_models: int, delay: float, ticks: int,
                                longest_tick: float | None = None,
                                most_cpu_per_tick: float | None = None) -> list[str]:
    """30 honest models answering after `delay` of a 1 s deadline beside `hostile_models` of
    tests/hostile_host.py in `mode`: every honest verdict is SUCCESS on every tick, and each
    tick takes under `longest_tick` seconds and `most_cpu_per_tick` of this process's CPU when
    given. Returns the hostile models' details, tick after tick."""
    details: list[str] = []
    server, port = start_fast_server("--delay", str(delay))
    try:
        with hostile(mode) as bad_port:
            client = address_client(
                models_at(port, 30, "honest-") + models_at(bad_port, hostile_models, "bad-"),
                timeout=1.0, max_consecutive_timeouts=100)
            async with client:
                await client.wait_for_models(30 + hostile_models, timeout=30)
                for tick in range(ticks):
                    started, cpu = time.monotonic(), time.process_time()
                    results = await client.call("predict")
                    took, spent = time.monotonic() - started, time.process_time() - cpu
                    honest = [r for r in results if r.model_id.startswith("honest")]
                    assert all(r.ok for r in honest), (tick, [r.detail for r in honest
                                                              if not r.ok])
                    if longest_tick is not None:
                        assert took < longest_tick, (tick, took)
                    if most_cpu_per_tick is not None:
                        assert spent < most_cpu_per_tick, (tick, spent)
                    details += [r.detail for r in results if r.model_id.startswith("bad")]
    finally:
        server.kill()
    return details


async def test_hosts_trickling_bytes_cost_honest_models_nothing(transport: str) -> None:
    """Five hosts answering in one-byte DATA frames beside 30 honest ones answering after 0.5 s
    (timeout 1 s): on grpclib 18 of 30 honest verdicts were TIMEOUT (settled when each call's
    task resumed, behind the deadline); now every call is settled by the protocol on arrival."""
    await honest_beside_hostile("trickle", hostile_models=5, delay=0.5, ticks=3)


async def test_a_host_sending_tiny_frames_costs_honest_models_nothing(transport: str) -> None:
    """Issue 22: one host answering in one-byte DATA frames as fast as it can, beside 30 honest
    ones answering in 0.6 s of a 1 s deadline: on grpclib every honest verdict was TIMEOUT on
    every tick (the client spent 13 s of CPU in 10 ticks); on ngh2 none."""
    await honest_beside_hostile("tiny-frames", hostile_models=1, delay=0.6, ticks=6,
                                longest_tick=1.0 + 0.5)


@pytest.mark.parametrize(("mode", "reason"), [
    ("headers-flood", "more http/2 frames than its calls need"),
    ("continuation-flood", "continuation"),
    ("endless-trailers", "continuation"),
])
async def test_a_host_flooding_header_frames_loses_its_connection(transport: str, mode: str,
                                                                  reason: str) -> None:
    """Issue 22: a host sending endless informational HEADERS, a header block that never ends,
    or trailers that never end, beside 30 honest ones: its connection is closed with the
    reason, and the client spends little CPU on it. Endless `:status 100` HEADERS cost the ngh2
    transport 0.65-0.83 s of CPU per tick (each is an event in Python), before its frame
    budget."""
    details = await honest_beside_hostile(mode, hostile_models=1, delay=0.6, ticks=3,
                                          longest_tick=1.0 + 0.5, most_cpu_per_tick=0.25)
    assert any(reason in detail.lower() for detail in details), details


async def test_a_heavy_setup_answer_does_not_hold_the_loop() -> None:
    """A Setup answered with ~4 MiB of one field repeated (valid, under the 4 MiB limit) held the
    client's loop 4.5 s in betterproto2's parser, and every tick with it; protobuf's C parser
    reads it in ~14 ms."""
    with hostile("heavy-setup") as port:
        client = address_client(models_at(port, 2))
        gaps: list[float] = []

        async def watch_loop() -> None:
            while True:
                before = time.monotonic()
                await anyio.sleep(0.01)
                gaps.append(time.monotonic() - before)

        async with client, anyio.create_task_group() as group:
            group.start_soon(watch_loop)
            await client.wait_for_models(2, timeout=30)
            assert all(r.ok for r in await client.call("predict"))
            group.cancel_scope.cancel()
    assert max(gaps) < 1.0, max(gaps)  # generous: the transfer itself, read in chunks
