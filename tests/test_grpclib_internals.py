"""Every private grpclib / h2 attribute this project relies on, exercised once: an upgrade that
breaks one fails here, with its name (grpclib and h2 are pinned for this reason)."""

from __future__ import annotations

from typing import Any

import pytest

from model_runner_client import ModelEndpoint
from model_runner_client.transports.grpclib import CLOSED_STREAMS_KEPT, GrpclibTransport
from tests.clients import address_client, endpoint
from tests.hosts import HostProcess

pytestmark = pytest.mark.anyio


async def test_client_bounds_h2s_record_of_closed_streams(good_host: HostProcess) -> None:
    """h2 would keep 65,536 closed-stream records per connection: megabytes per model.
    (H2Protocol.connection._connection._closed_streams._size_limit)"""
    client = address_client([endpoint(good_host, "good")], transport="grpclib")
    async with client:
        await client.wait_for_models(1, timeout=20)
        for _ in range(CLOSED_STREAMS_KEPT + 100):
            assert (await client.call("predict", "BTC", 1))[0].ok
        # An internals test: it reaches the model's transport through the client's registry.
        transport: Any = client._registry.models.slots["good"].connection.transport
        assert isinstance(transport, GrpclibTransport)
        protocol: Any = transport._channel._protocol
        closed = protocol.connection._connection._closed_streams
        assert len(closed) <= CLOSED_STREAMS_KEPT


async def test_client_reads_the_length_prefix_and_the_peer(toolbox_host: HostProcess) -> None:
    """The client's own events processor (EventsProcessor subclassed: the answer limit, read
    from the length prefix) and Connection._transport (the TLS peer's key)."""
    client = address_client([endpoint(toolbox_host, "tool")], transport="grpclib",
                            max_receive_message_length=10_000)
    async with client:
        await client.wait_for_models(1, timeout=20)
        result = (await client.call("big", 20_000))[0]
        assert "over the client's max_receive_message_length" in result.detail
        assert (await client.call("big", 10))[0].output == "x" * 10


async def test_host_reads_its_bound_port_and_raw_stream() -> None:
    """model_runner/_grpclib.py: Server._server (the port bound for port 0) and a server
    Stream's _stream.recv_data (the request limit, read from the length prefix)."""
    from grpclib.client import Channel
    from grpclib.const import Status as GrpcStatus
    from grpclib.exceptions import GRPCError
    from grpclib.health.check import ServiceStatus

    from model_runner import HostConfig, ModelHost
    from model_runner._grpclib import listening_sockets
    from model_runner.wire import CallRequest, DynamicSubclassServiceStub
    from tests.hosts import TEST_SUBMISSIONS

    host = ModelHost(HostConfig(TEST_SUBMISSIONS / "toolbox", host="127.0.0.1", port=0,
                                max_receive_message_length=100))
    await host.start()
    try:
        sockets = listening_sockets(host._server)
        port = sockets[0].getsockname()[1]
        assert port > 0 and host.port == port and host.families == "IPv4"
        async with Channel("127.0.0.1", port) as channel:
            with pytest.raises(GRPCError) as refused:
                await DynamicSubclassServiceStub(channel).call(
                    CallRequest(method_name="x" * 200), timeout=10)
            assert refused.value.status is GrpcStatus.RESOURCE_EXHAUSTED
        assert isinstance(host._overall, ServiceStatus)
    finally:
        await host.drain(0)


async def test_a_call_on_a_connection_closed_under_it_is_a_connection_error(
        good_host: HostProcess) -> None:
    """grpclib's Connection.close() deletes `_transport`: a stream opened on it afterwards
    raised AttributeError, which the client took for a bug of its own."""
    from model_runner.wire import CALL_PATH
    from model_runner_client.transport_security import ConnectionSecurity
    from model_runner_client.transports import unary
    from model_runner_client.transports.call import frame

    transport = GrpclibTransport(ModelEndpoint("good", "127.0.0.1", good_host.port, "d"),
                                 ConnectionSecurity(), 1 << 20)
    try:
        await unary(transport, CALL_PATH, frame(b""), None)  # connects (any answer will do)
        protocol: Any = transport._channel._protocol
        connection = protocol.connection
        real = connection._transport
        del connection._transport  # what Connection.close() leaves until connection_lost runs
        try:
            with pytest.raises(ConnectionResetError, match="closed under the call"):
                await unary(transport, CALL_PATH, frame(b""), None)
        finally:
            real.close()
    finally:
        transport.close()


def test_the_h2_events_the_host_compares_by_type_have_no_subclasses() -> None:
    """model_runner/_grpclib.py dispatches h2's events with `type(event) is` (cheaper than
    isinstance, on every frame): that holds while h2 does not subclass them."""
    import h2.events

    for event in (h2.events.RequestReceived, h2.events.WindowUpdated, h2.events.StreamReset,
                  h2.events.RemoteSettingsChanged, h2.events.PingReceived):
        assert event.__subclasses__() == [], event


def test_the_h2_connection_window_reads_the_host_uses_exist() -> None:
    """The stalled-stream bound reads h2's windows (outbound_flow_control_window,
    local_flow_control_window) and grpclib's Connection._connection (its H2Connection)."""
    import inspect

    import grpclib.protocol
    import h2.connection

    connection = h2.connection.H2Connection()
    assert isinstance(connection.outbound_flow_control_window, int)
    assert callable(connection.local_flow_control_window)
    assert "self._connection = connection" in inspect.getsource(grpclib.protocol.Connection)


def test_h2_parses_every_frame_through_the_frame_buffer_the_client_budgets() -> None:
    """transports/grpclib.py replaces H2Connection.incoming_buffer with a FrameBuffer whose
    `_update_header_buffer` (called once per parsed frame, CONTINUATION included) spends the
    connection's FrameBudget."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.frame_buffer import FrameBuffer

    seen: list[object] = []

    class Counting(FrameBuffer):
        def _update_header_buffer(self, f: Any) -> Any:
            seen.append(f)
            return super()._update_header_buffer(f)

    connection = H2Connection(H2Configuration(client_side=True))
    connection.initiate_connection()
    assert isinstance(connection.incoming_buffer, FrameBuffer)
    connection.incoming_buffer = Counting(server=False)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00"
    connection.receive_data(settings + ping + b"\x00" * 8)
    assert len(seen) == 2


def test_h2s_goaway_transition_the_client_overrides_is_where_it_looks() -> None:
    """transports/grpclib.py keeps a connection open after a GOAWAY by replacing the entry
    (CLIENT_OPEN, RECV_GOAWAY) of H2ConnectionStateMachine._transitions, which h2 reads in
    process_input: the key must exist, and the override must keep the state open."""
    import inspect

    from h2.connection import (
        ConnectionInputs,
        ConnectionState,
        H2ConnectionStateMachine,
    )

    key = (ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY)
    assert key in H2ConnectionStateMachine._transitions
    assert "self._transitions[" in inspect.getsource(H2ConnectionStateMachine.process_input)
    machine = H2ConnectionStateMachine()
    machine._transitions = {**machine._transitions, key: (None, ConnectionState.CLIENT_OPEN)}
    machine.process_input(ConnectionInputs.SEND_HEADERS)  # IDLE -> CLIENT_OPEN
    machine.process_input(ConnectionInputs.RECV_GOAWAY)
    assert machine.state is ConnectionState.CLIENT_OPEN
    assert H2ConnectionStateMachine().state is ConnectionState.IDLE  # the class is untouched


async def test_grpclib_servers_protocol_factory_is_what_the_host_rewrites() -> None:
    """model_runner/_grpclib.py's GuardedServer._protocol_factory rewrites grpclib's own to build
    a guarded handler and protocol: it calls __gc_step__ and reads _mapping, _codec,
    _status_details_codec, __dispatch__, _handlers, _config and _h2_config, as grpclib's does."""
    import inspect

    from grpclib.server import Server

    from model_runner._grpclib import ConnectionLimits, GuardedServer
    from model_runner.codec import PassthroughCodec

    source = inspect.getsource(Server._protocol_factory)
    for name in ("self.__gc_step__()", "self._mapping", "self._codec",
                 "self._status_details_codec", "self.__dispatch__", "self._handlers.add(",
                 "self._config", "self._h2_config"):
        assert name in source, name
    server = GuardedServer([], codec=PassthroughCodec(), limits=ConnectionLimits())
    assert server._mapping == {} and isinstance(server._handlers, set)
    protocol = server._protocol_factory()
    assert len(server._handlers) == 1 and protocol.handler in server._handlers
