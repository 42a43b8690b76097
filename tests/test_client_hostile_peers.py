"""A host that misbehaves below gRPC (random bytes, HTTP/1, a closed connection, silence)
costs only itself: it is reported once as CONNECTION_FAILED, the client never raises, and the
other models are called as usual. On both transports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from grpclib.health.v1.health_pb2 import HealthCheckResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runner_client import CallStatus, FailureReport
from tests.clients import address_client, endpoint
from tests.hosts import HostProcess, until

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


async def _garbage(data: bytes) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()
    return behave


async def _http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@contextlib.asynccontextmanager
async def _serving(behaviour: Behaviour) -> AsyncIterator[int]:
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def check(good_host: HostProcess, behaviour: Behaviour) -> None:
    reports: list[FailureReport] = []
    async with _serving(behaviour) as port:
        client = address_client(
            [endpoint(good_host, "good"), endpoint(port, "odd")], connect_attempts=1,
            setup_timeout=5,
            on_failure=reports.append)
        async with client:
            await client.wait_for_models(timeout=20)  # returns: the odd one settled too
            assert [m.model_id for m in client.models] == ["good"]
            results = await client.call("predict", "BTC", 2)
            assert [r.model_id for r in results] == ["good"] and results["good"].ok
            await until(lambda: bool(reports))
            assert [(r.model.model_id, r.code) for r in reports] == [
                ("odd", "CONNECTION_FAILED")]


@pytest.mark.parametrize("name", ["http1", "hang up", "HTTP/2 preface then garbage"])
async def test_a_host_that_does_not_speak_grpc(good_host: HostProcess, name: str) -> None:
    behaviour = {"http1": _http1, "hang up": _hang_up,
                 "HTTP/2 preface then garbage": await _garbage(
                     b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\xff" * 64)}[name]
    await check(good_host, behaviour)


@settings(max_examples=15)
@given(data=st.binary(min_size=1, max_size=200))
def test_random_bytes_from_a_host(good_host: HostProcess, data: bytes,
                                  transport: str) -> None:
    async def scenario() -> None:
        await check(good_host, await _garbage(data))

    asyncio.run(scenario())


class _TooMuch(asyncio.Protocol):
    """Speaks gRPC over HTTP/2 (ngh2, server role): Setup succeeds; a Call's answer announces
    one small message and then keeps sending megabytes after it, before its trailers."""

    def __init__(self) -> None:
        import ngh2
        self.ngh2 = ngh2
        self.h2 = ngh2.Connection(ngh2.Role.SERVER)
        self.paths: dict[int, bytes] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        from model_runner.wire import CallResponse, SetupResponse, Status
        self.h2.receive_data(data)
        for event in self.h2.events():
            if isinstance(event, self.ngh2.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers)[b":path"]
            elif isinstance(event, self.ngh2.DataReceived) and event.end_stream:
                if self.paths[event.stream_id].endswith(b"/Setup"):
                    body = bytes(SetupResponse(status=Status(code="SUCCESS")))
                    extra = b""
                else:
                    body = bytes(CallResponse(status=Status(code="SUCCESS")))
                    extra = b"\x00" * (8 << 20)
                try:
                    self.h2.send_response(event.stream_id, [
                        (b":status", b"200"), (b"content-type", b"application/grpc")])
                    self.h2.send_data(event.stream_id,
                                      b"\x00" + len(body).to_bytes(4, "big") + body + extra)
                    self.h2.send_trailers(event.stream_id, [(b"grpc-status", b"0")])
                except self.ngh2.NGH2Error:
                    pass  # the client reset the stream first
        self.transport.write(self.h2.data_to_send())


async def test_an_answer_longer_than_its_message_is_refused() -> None:
    """An answer that goes on past its announced message is refused (it would otherwise pile
    up without bound), on both transports; the call ends cleanly and the client goes on."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TooMuch, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        client = address_client([endpoint(port, "odd")], timeout=5.0)
        async with client:
            await client.wait_for_models(1, timeout=20)
            result = (await client.call("predict", "BTC", 2))["odd"]
            # Both transports read answers with the same rules (transports/call.py).
            assert result.status is CallStatus.FAILURE
            assert "more than the one message" in result.detail
            assert (await client.call("predict", "BTC", 2))["odd"].latency_us < 5_000_000
    finally:
        server.close()


NOT_SERVING = HealthCheckResponse(status=HealthCheckResponse.NOT_SERVING).SerializeToString()


class _OddHealth:
    """A host that sets up and answers calls (slowly when asked), but whose health answers are
    `health_answer` (bytes that do not parse, or NOT_SERVING)."""

    def __init__(self, health_answer: bytes) -> None:
        self.health_answer = health_answer
        self.setups = 0
        self.slow_calls = 2  # the first two calls time out: each asks for a probe

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        from model_runner.wire import CALL_PATH, SETUP_PATH
        unary = Cardinality.UNARY_UNARY
        return {SETUP_PATH: Handler(self.setup, unary, bytes, bytes),
                CALL_PATH: Handler(self.call, unary, bytes, bytes),
                "/grpc.health.v1.Health/Check": Handler(self.health, unary, bytes, bytes)}

    async def setup(self, stream: Any) -> None:
        from model_runner.wire import SetupResponse, Status
        await stream.recv_message()
        self.setups += 1
        await stream.send_message(bytes(SetupResponse(status=Status(code="SUCCESS"))))

    async def call(self, stream: Any) -> None:
        from model_runner.wire import CallResponse, Status, encode_value
        await stream.recv_message()
        if self.slow_calls:
            self.slow_calls -= 1
            await asyncio.sleep(5)
        await stream.send_message(bytes(CallResponse(status=Status(code="SUCCESS"),
                                                     method_response=encode_value(1.0))))

    async def health(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(self.health_answer)


@pytest.mark.parametrize("health_answer", [b"\xff\xff\xff\xff", NOT_SERVING],
                         ids=["unparsable", "NOT_SERVING"])
async def test_a_probe_that_finds_the_host_not_serving_sets_it_up_again(
        health_answer: bytes) -> None:
    """A health answer that does not parse escaped the slot's supervisor: the model stayed
    CHECKING, never probed or set up again. Now a probe that gets no usable answer reconnects,
    and one that finds the model service not SERVING (or no answer) sets the model up again,
    after every timeout (README "Failure policy")."""
    from grpclib.server import Server

    from model_runner.codec import PassthroughCodec
    odd = _OddHealth(health_answer)
    server = Server([odd], codec=PassthroughCodec())
    await server.start("127.0.0.1", 0)
    # grpclib's Server does not say the port it bound to port 0.
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    reports: list[FailureReport] = []
    try:
        client = address_client(
            [endpoint(port, "odd")], timeout=0.5,
            max_consecutive_timeouts=10, on_failure=reports.append)
        async with client:
            await client.wait_for_models(1, timeout=20)
            assert (await client.call("predict"))[0].status is CallStatus.TIMEOUT
            await until(lambda: odd.setups == 2)  # probed, reconnected, set up again
            skipped = (await client.call("predict"))[0]  # cooling down after one timeout
            assert skipped.status is CallStatus.TIMEOUT and "cooling down" in skipped.detail
            assert (await client.call("predict"))[0].status is CallStatus.TIMEOUT
            await until(lambda: odd.setups == 3)  # and again: the supervisor lives on
            statuses = [(await client.call("predict"))[0].status for _ in range(2)]
            assert statuses == [CallStatus.TIMEOUT, CallStatus.SUCCESS]  # a skip, then served
            assert [m.model_id for m in client.models] == ["odd"]
        assert reports == []
    finally:
        server.close()
        await server.wait_closed()
