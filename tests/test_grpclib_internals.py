"""Every private grpclib / h2 attribute this project relies on, exercised once: an upgrade that
breaks one fails here, with its name (grpclib and h2 are pinned for this reason)."""

from __future__ import annotations

from typing import Any

import pytest

from model_runner_client import ModelEndpoint, ModelRunnerClient
from model_runner_client.transports.grpclib import CLOSED_STREAMS_KEPT, GrpclibTransport
from tests.hosts import BASE, HostProcess

pytestmark = pytest.mark.anyio


async def test_client_bounds_h2s_record_of_closed_streams(good_host: HostProcess) -> None:
    """h2 would keep 65,536 closed-stream records per connection: megabytes per model.
    (H2Protocol.connection._connection._closed_streams._size_limit)"""
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint("good", "127.0.0.1", good_host.port, "d")], base_classname=BASE,
        transport="grpclib")
    async with client:
        await client.wait_for_models(1, timeout=20)
        for _ in range(CLOSED_STREAMS_KEPT + 100):
            assert (await client.call("predict", "BTC", 1))[0].ok
        transport: Any = client._slots["good"].connection.transport
        assert isinstance(transport, GrpclibTransport)
        closed = transport._channel._protocol.connection._connection._closed_streams
        assert len(closed) <= CLOSED_STREAMS_KEPT


async def test_client_reads_the_length_prefix_and_the_peer(toolbox_host: HostProcess) -> None:
    """Stream._recv_initial_metadata_done, ._wrapper, ._stream.recv_data (the answer limit) and
    Peer._transport (the TLS peer's key; here, no TLS: the transport is still found)."""
    client = ModelRunnerClient.from_addresses(
        [ModelEndpoint("tool", "127.0.0.1", toolbox_host.port, "d")], base_classname=BASE,
        transport="grpclib", max_receive_message_length=10_000)
    async with client:
        await client.wait_for_models(1, timeout=20)
        result = (await client.call("big", 20_000))[0]
        assert "over the client's max_receive_message_length" in result.detail
        assert (await client.call("big", 10))[0].output == "x" * 10


def test_host_reads_its_bound_port() -> None:
    """grpclib.server.Server._server (the asyncio server whose sockets tell the port bound for
    port 0) and server Stream._stream.recv_data (the request limit, tested in test_service)."""
    from tests.hosts import TEST_SUBMISSIONS
    host = HostProcess(TEST_SUBMISSIONS / "toolbox").start()
    try:
        assert host.port > 0 and f"127.0.0.1:{host.port}" in host.log
    finally:
        host.stop()
