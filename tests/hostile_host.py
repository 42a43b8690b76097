"""A model host that misbehaves at the HTTP/2 level, scripted with h2 (server side), run as its
own process so that its floods cost the client only what they cost over a socket:

    python tests/hostile_host.py PORT MODE

Setup and health are answered as a host would; Call behaves by MODE:

- `goaway-each`: answers, then sends a shutdown notice (GOAWAY, last stream id 2^31-1) on
  every call, and keeps the connection open.
- `answer-then-goaway`: the same bytes in one write, so the GOAWAY arrives with the answer.
- `goaway-then-answer`: a GOAWAY naming the call's stream as the last it takes, then the
  answer (h2, as a client, refused every frame after a GOAWAY).
- `contradicting-status`: grpc-status 13 in the headers, then the answer and grpc-status 0 in
  the trailers (gRPC's rule: the trailers' status is the call's).
- `bad-utf8-message`: grpc-status 13 with a grpc-message that is not UTF-8.
- `ping-flood`: answers, then floods PINGs and reads nothing more.
- `trickle`: answers in one-byte DATA frames, slowly, never finishing (a loop hog).
- `tiny-frames`: answers in one-byte DATA frames as fast as it can (a thousand per write),
  never finishing: it spends the client's CPU, not its own.
- `headers-flood`: informational HEADERS (`:status 100`, which HTTP/2 allows any number of
  before the answer), 1,000 per write, never answering.
- `continuation-flood`: a HEADERS frame without END_HEADERS, then empty CONTINUATION frames,
  1,000 per write: a header block that never ends.
- `endless-trailers`: the answer, then trailers whose header block never ends (CONTINUATION
  frames of one header field each, 1,000 per write).
- `heavy-setup`: answers Setup with ~4 MiB (under the client's limit) of one status field
  repeated: betterproto2 took 4.5 s of the client's loop to parse it, protobuf 14 ms.
- `slow-setup`: holds every Setup for SLOW_SETUP seconds; Call answers with the most Setups
  it has held at once, across all its connections.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import h2.config
import h2.connection
import h2.events
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.wire import CallResponse, SetupResponse, Status, encode_value


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


ANSWER = framed(bytes(CallResponse(status=Status(code="SUCCESS"),
                                   method_response=encode_value(1.0))))
SETUP = framed(bytes(SetupResponse(status=Status(code="SUCCESS"))))
HEALTH = framed(HealthCheckResponse(status=HealthCheckResponse.SERVING).SerializeToString())
END_STREAM, END_HEADERS = 0x1, 0x4
#: HPACK header blocks written raw (literal fields, without indexing; :status is the static
#: table's name 8): `:status: 100`, `:status: 200`, `grpc-status: 0`, `x-pad: p`.
STATUS_100 = b"\x08\x03100"
STATUS_200 = b"\x88"
GRPC_STATUS_0 = b"\x00\x0bgrpc-status\x010"
PAD_FIELD = b"\x00\x05x-pad\x01p"


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame as bytes (RFC 9113 section 4.1), for what h2 would refuse to send."""
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + stream_id.to_bytes(4, "big") + payload)


OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
SLOW_SETUP = 0.3
#: The status field { code: "SUCCESS" } repeated to ~4 MiB: a valid SetupResponse.
HEAVY_SETUP = framed(b"\x0a\x09\x0a\x07SUCCESS" * (4 * 1024 * 1024 // 11 - 1))


class SetupCount:
    """Setups held at once (slow-setup), across connections."""

    now = 0
    most = 0


class Host(asyncio.Protocol):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False))
        self.paths: dict[int, bytes] = {}
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if self.mode == "ping-flood" and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 24)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception:  # the client closed or reset: nothing to do
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers).get(b":path", b"")
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id)
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def send(self, stream_id: int, body: bytes, trailers: list[tuple[bytes, bytes]],
             headers: list[tuple[bytes, bytes]] = OK_HEADERS) -> None:
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, body)
        self.h2.send_headers(stream_id, trailers, end_stream=True)

    def answer(self, stream_id: int) -> None:
        path = self.paths.pop(stream_id, b"")
        ok = [(b"grpc-status", b"0")]
        if path.endswith(b"/Setup") and self.mode == "slow-setup":
            self.spawn(self.slow_setup(stream_id))
        elif path.endswith(b"/Setup") and self.mode == "heavy-setup":
            self.spawn(self.send_within_windows(stream_id, HEAVY_SETUP))
        elif path.endswith(b"/Setup"):
            self.send(stream_id, SETUP, ok)
        elif path.endswith(b"/Check"):
            self.send(stream_id, HEALTH, ok)
        elif self.mode == "heavy-setup":
            self.send(stream_id, ANSWER, ok)
        elif self.mode in ("goaway-each", "answer-then-goaway"):
            self.send(stream_id, ANSWER, ok)
            if self.mode == "goaway-each":
                # A shutdown notice (GOAWAY, last stream id 2^31-1), written raw: h2 would close
                # its side, where a notice lets calls already sent be answered.
                self.flush()
                assert self.transport is not None
                self.transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                                     + (2**31 - 1).to_bytes(4, "big") + bytes(4))
            else:
                self.h2.close_connection(last_stream_id=stream_id)
        elif self.mode == "goaway-then-answer":
            self.flush()
            assert self.transport is not None
            self.transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                                 + stream_id.to_bytes(4, "big") + bytes(4))
            self.send(stream_id, ANSWER, ok)
        elif self.mode == "contradicting-status":
            self.send(stream_id, ANSWER, ok,
                      headers=[*OK_HEADERS, (b"grpc-status", b"13"),
                               (b"grpc-message", b"from the headers")])
        elif self.mode == "bad-utf8-message":
            self.h2.send_headers(stream_id, [*OK_HEADERS, (b"grpc-status", b"13"),
                                             (b"grpc-message", b"\xff\xfe bad \xc3\x28")],
                                 end_stream=True)
        elif self.mode == "ping-flood":
            self.send(stream_id, ANSWER, ok)
            self.spawn(self.flood_pings())
        elif self.mode == "slow-setup":
            self.send(stream_id, framed(bytes(CallResponse(
                status=Status(code="SUCCESS"),
                method_response=encode_value(float(SetupCount.most))))), ok)
        elif self.mode == "trickle":
            self.h2.send_headers(stream_id, OK_HEADERS)
            self.spawn(self.trickle(stream_id))
        elif self.mode == "tiny-frames":
            self.h2.send_headers(stream_id, OK_HEADERS)
            self.flush()
            # One-byte DATA frames written raw: h2 would refuse to exceed the client's window,
            # which the client reopens as it reads (1,000 bytes a write, under its 65,535).
            self.spawn(self.flood(raw_frame(0x0, 0, stream_id, b"\x00")))
        elif self.mode == "headers-flood":
            self.spawn(self.flood(raw_frame(0x1, END_HEADERS, stream_id, STATUS_100)))
        elif self.mode == "continuation-flood":
            self.spawn(self.flood(raw_frame(0x9, 0, stream_id, b""),
                                  first=raw_frame(0x1, 0, stream_id, STATUS_200)))
        elif self.mode == "endless-trailers":
            self.h2.send_headers(stream_id, OK_HEADERS)
            self.h2.send_data(stream_id, ANSWER)
            self.flush()
            self.spawn(self.flood(raw_frame(0x9, 0, stream_id, PAD_FIELD),
                                  first=raw_frame(0x1, END_STREAM, stream_id, GRPC_STATUS_0)))

    def spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def flood_pings(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()  # reads none of the acks
        frame = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + bytes(8)
        for _ in range(2000):
            if self.transport.is_closing():
                return
            self.transport.write(frame * 1000)
            await asyncio.sleep(0)

    async def send_within_windows(self, stream_id: int, body: bytes) -> None:
        """Send a large answer as the client's flow-control windows allow."""
        self.h2.send_headers(stream_id, OK_HEADERS)
        sent = 0
        while sent < len(body):
            if self.transport is None or self.transport.is_closing():
                return
            room = min(self.h2.local_flow_control_window(stream_id),
                       self.h2.max_outbound_frame_size, len(body) - sent)
            if room <= 0:
                await asyncio.sleep(0.001)  # until the client's WINDOW_UPDATE
                continue
            self.h2.send_data(stream_id, body[sent:sent + room])
            sent += room
            self.flush()
        self.h2.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
        self.flush()

    async def slow_setup(self, stream_id: int) -> None:
        SetupCount.now += 1
        SetupCount.most = max(SetupCount.most, SetupCount.now)
        try:
            await asyncio.sleep(SLOW_SETUP)
        finally:
            SetupCount.now -= 1
        try:
            self.send(stream_id, SETUP, [(b"grpc-status", b"0")])
        except Exception:  # the client gave up on it
            return
        self.flush()

    async def trickle(self, stream_id: int) -> None:
        for byte in ANSWER * 100_000:
            if self.transport is None or self.transport.is_closing():
                return
            try:
                self.h2.send_data(stream_id, bytes([byte]))
            except Exception:  # the client reset the stream
                return
            self.flush()
            await asyncio.sleep(0)


    async def flood(self, frame: bytes, *, first: bytes = b"") -> None:
        """`first`, then `frame` 1,000 times a write as fast as the client reads, until the
        connection closes: it costs the client's CPU, not this host's."""
        assert self.transport is not None
        self.transport.write(first)
        while not self.transport.is_closing():
            if self.transport.get_write_buffer_size() < 65536:
                self.transport.write(frame * 1000)
            await asyncio.sleep(0)


async def main(port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Host(mode), "127.0.0.1", port)
    print(f"serving on {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
