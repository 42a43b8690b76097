"""Arbitrary CallRequests, well-formed or not, never crash the host; each gets a status."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runner.codec import PassthroughCodec
from model_runner.wire import (
    CALL_PATH,
    Argument,
    CallRequest,
    CallResponse,
    DynamicSubclassServiceStub,
    KwArgument,
    StatusCode,
    Variant,
)
from tests.hosts import HostProcess, set_up

method_names = st.sampled_from(["echo", "first", "only_x", "predict", "tick", "fail", "big",
                                "unencodable", "_secret", "__class__", "prop", "missing", ""]) \
    | st.text(max_size=12)
values = (
    st.binary(max_size=24)
    | st.integers(-(2**70), 2**70).map(lambda i: i.to_bytes(9, "little", signed=True)[:8])
    | st.sampled_from([b"{", b"[1,", b"NaN", b"\xff\xfe", b'{"a": Infinity}', b"[" * 5000,
                       struct.pack("<d", float("nan"))])
)
variants = st.builds(Variant, type=st.integers(0, 12), value=values)
requests = st.builds(
    CallRequest,
    method_name=method_names,
    method_arguments=st.lists(st.builds(Argument, position=st.integers(0, 2**32 - 1),
                                        data=st.none() | variants), max_size=3),
    method_kw_arguments=st.lists(st.builds(KwArgument, keyword=st.text(max_size=8),
                                           data=st.none() | variants), max_size=3),
)
raw_bodies = requests.map(bytes) | st.binary(max_size=64) | requests.map(
    lambda r: bytes(r)[:-1] + b"\xff")  # truncations and invalid UTF-8 inside strings

KNOWN_CODES = {code.value for code in StatusCode}


async def send_raw(channel: Channel, body: bytes) -> bytes:
    async with channel.request(CALL_PATH, Cardinality.UNARY_UNARY, bytes, bytes,
                               timeout=10) as stream:
        await stream.send_message(body, end=True)
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
        assert reply is not None
        return reply


@settings(max_examples=150)
@given(bodies=st.lists(raw_bodies, min_size=1, max_size=4))
def test_arbitrary_call_requests_get_a_status(toolbox_host_on_each_loop: HostProcess,
                                              bodies: list[bytes]) -> None:
    async def scenario() -> None:
        channel = Channel("127.0.0.1", toolbox_host_on_each_loop.port, codec=PassthroughCodec())
        try:
            await set_up(DynamicSubclassServiceStub(channel))
            for body in bodies:
                try:
                    reply = CallResponse.parse(await send_raw(channel, body))
                except GRPCError as error:
                    # Only bytes that are not a CallRequest are refused at the gRPC level.
                    assert error.status is GrpcStatus.INVALID_ARGUMENT, error
                    assert error.message
                    continue
                assert reply.status is not None and reply.status.code in KNOWN_CODES
                if reply.status.code != StatusCode.SUCCESS:
                    assert reply.status.message
            health = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
            assert health is not None and health.status == HealthCheckResponse.SERVING
        finally:
            channel.close()

    asyncio.run(scenario())
    host = toolbox_host_on_each_loop
    assert host.proc is not None and host.proc.poll() is None


@pytest.mark.anyio
async def test_lying_length_prefix_is_refused(toolbox_host_on_each_loop: HostProcess) -> None:
    """A prefix claiming 4 GiB is refused from the prefix alone, before any body arrives."""
    channel = Channel("127.0.0.1", toolbox_host_on_each_loop.port)
    try:
        async with channel.request(CALL_PATH, Cardinality.UNARY_UNARY, CallRequest, CallResponse,
                                   timeout=10) as stream:
            await stream.send_request()
            await stream._stream.send_data(struct.pack(">?I", False, 2**32 - 1), end_stream=True)
            stream._end_done = True  # we ended the stream underneath grpclib's client
            with pytest.raises(GRPCError) as refused:
                await stream.recv_message()
        assert refused.value.status is GrpcStatus.RESOURCE_EXHAUSTED
    finally:
        channel.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


HOSTILE_BODIES = {
    # Well-formed: a million empty arguments (6 MB); betterproto2 took 35 s to parse it.
    "a million empty arguments": b"\x0a\x04echo" + b"\x12\x00" * 1_000_000,
    # Malformed: one argument of 1 MiB of zero bytes; betterproto2 took 60 s of CPU on it.
    "an argument of zero bytes": b"\x0a\x04echo\x12" + _varint(2**20) + bytes(2**20),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
async def test_large_hostile_requests_are_cheap_and_never_block_health(
        toolbox_host_on_each_loop: HostProcess, case: str) -> None:
    """Read and refused in well under a second, while health (on another connection) keeps
    answering promptly."""
    channel = Channel("127.0.0.1", toolbox_host_on_each_loop.port, codec=PassthroughCodec())
    prober = Channel("127.0.0.1", toolbox_host_on_each_loop.port)
    latencies: list[float] = []
    sending = True

    async def probe() -> None:
        while sending:
            started = time.monotonic()
            await HealthStub(prober).Check(HealthCheckRequest(), timeout=10)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    try:
        await set_up(DynamicSubclassServiceStub(channel))
        probing = asyncio.ensure_future(probe())
        started = time.monotonic()
        try:
            reply = CallResponse.parse(await send_raw(channel, HOSTILE_BODIES[case]))
            assert reply.status is not None and reply.status.code == StatusCode.INVALID_ARGUMENT
            assert "at most 1024" in reply.status.message
        except GRPCError as refused:
            assert refused.status is GrpcStatus.INVALID_ARGUMENT and refused.message
            assert case == "an argument of zero bytes"
        elapsed = time.monotonic() - started
        sending = False
        await probing
        assert elapsed < 3.0, elapsed  # generous: the request itself is 1-6 MB on loopback
        assert latencies and max(latencies) < 1.0, latencies
    finally:
        channel.close()
        prober.close()


@pytest.mark.anyio
@pytest.mark.parametrize("type_,value", [(3, b"\xff\xfe"), (6, b'"\xff"'), (6, b"[\xc3]")])
async def test_invalid_utf8_arguments_are_invalid_argument(toolbox_host_on_each_loop: HostProcess,
                                                           type_: int, value: bytes) -> None:
    channel = Channel("127.0.0.1", toolbox_host_on_each_loop.port, codec=PassthroughCodec())
    try:
        await set_up(DynamicSubclassServiceStub(channel))
        body = bytes(CallRequest(method_name="echo", method_arguments=[
            Argument(position=0, data=Variant(type=type_, value=value))]))
        reply = CallResponse.parse(await send_raw(channel, body))
        assert reply.status is not None and reply.status.code == StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in reply.status.message
    finally:
        channel.close()
