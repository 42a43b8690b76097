"""Hostile input at the transport level: the host never crashes or hangs, answers health
throughout, and every well-formed call still gets its answer."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runner.wire import (
    Argument,
    CallRequest,
    DynamicSubclassServiceStub,
    Variant,
    VariantType,
    decode_variant,
)
from tests.hosts import HostProcess, ok, set_up

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def check_healthy(host: HostProcess) -> None:
    """Health answers and a well-formed call gets its answer, within a generous bound."""
    started = time.monotonic()
    async with host.channel() as channel:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
        assert reply is not None and reply.status == HealthCheckResponse.SERVING
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        assert await ok(stub, "first", 42) == 42
    assert time.monotonic() - started < 5
    assert host.proc is not None and host.proc.poll() is None


def healthy(host: HostProcess) -> None:
    asyncio.run(check_healthy(host))


def poke(host: HostProcess, data: bytes, *, read: bool = True) -> None:
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            if read:
                sock.settimeout(2)
                while sock.recv(65536):
                    pass
        except (ConnectionError, TimeoutError, OSError):
            pass  # the host may close on garbage: that is fine


def test_random_bytes_leave_the_host_alive_and_healthy(
        toolbox_host_on_each_loop: HostProcess) -> None:
    """Random bytes, raw and after the HTTP/2 preface, each on a connection of its own: the
    host survives every one, and answers health and a call afterwards (one test, so that the
    health check never depends on another test having run first)."""
    host = toolbox_host_on_each_loop

    @settings(max_examples=60)
    @given(st.binary(min_size=1, max_size=512) |
           st.binary(max_size=64).map(lambda b: PREFACE + b))
    def each(data: bytes) -> None:
        poke(host, data, read=False)
        assert host.proc is not None and host.proc.poll() is None

    each()
    healthy(host)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /dynamic_subclass.DynamicSubclassService/Call HTTP/1.1\r\n"
    b"Content-Length: 5\r\n\r\nhello",
    PREFACE,  # and then silence
    PREFACE + struct.pack(">I", 1000)[1:] + b"\x04\x00\x00\x00\x00\x00" + b"\x00" * 10,  # cut
    PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x40\x00\x01\x00\x00\x00\x01",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello on plaintext
])
def test_malformed_protocol_input(toolbox_host_on_each_loop: HostProcess, data: bytes) -> None:
    poke(toolbox_host_on_each_loop, data)
    healthy(toolbox_host_on_each_loop)


@pytest.mark.anyio
async def test_deeply_nested_json_and_large_messages(
        toolbox_host_on_each_loop: HostProcess) -> None:
    async with toolbox_host_on_each_loop.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        await set_up(stub)
        nested = Variant(type=VariantType.JSON, value=b"[" * 200_000 + b"]" * 200_000)
        response = await stub.call(CallRequest(method_name="first", method_arguments=[
            Argument(position=0, data=nested)]), timeout=20)
        assert response.status is not None and response.status.code == "INVALID_ARGUMENT"
        assert "nested too deeply" in response.status.message
        text = "y" * 8_000_000
        response = await stub.call(CallRequest(method_name="first", method_arguments=[
            Argument(position=0, data=Variant(type=VariantType.STRING, value=text.encode()))]),
            timeout=30)
        assert decode_variant(response.method_response) == text
    await check_healthy(toolbox_host_on_each_loop)


def test_a_thousand_idle_connections(toolbox_host_on_each_loop: HostProcess) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", toolbox_host_on_each_loop.port),
                                            timeout=5)
            if i % 2:
                sock.sendall(PREFACE)  # half of them start HTTP/2 and go quiet
            idle.append(sock)
        healthy(toolbox_host_on_each_loop)
    finally:
        for sock in idle:
            sock.close()
    healthy(toolbox_host_on_each_loop)
