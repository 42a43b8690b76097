"""A host that misbehaves below gRPC (random bytes, HTTP/1, a closed connection, silence)
costs only itself: it is reported once as CONNECTION_FAILED, the client never raises, and the
other models are called as usual. On both transports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runner_client import FailureReport, ModelEndpoint, ModelRunnerClient
from tests.hosts import BASE, HostProcess, until

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
        client = ModelRunnerClient.from_addresses(
            [ModelEndpoint("good", "127.0.0.1", good_host.port, "d"),
             ModelEndpoint("odd", "127.0.0.1", port, "d")],
            base_classname=BASE, connect_attempts=1, setup_timeout=5,
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
