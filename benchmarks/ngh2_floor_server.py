"""The floor of a host on libnghttp2 (ngh2, the client's engine), for benchmarks/host_cost.py:
an asyncio protocol that answers every request with a constant gRPC answer, no message library,
no model, no defences. It is what a host's HTTP/2 would cost if it left grpclib and h2 (pure
Python) for nghttp2 (C).

    python benchmarks/ngh2_floor_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import ngh2
import uvloop

from model_runner.wire import CallResponse, Status, encode_value

ANSWER = bytes(CallResponse(status=Status(code="SUCCESS"), method_response=encode_value(1.0)))
FRAMED = b"\x00" + len(ANSWER).to_bytes(4, "big") + ANSWER
HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


class Constant(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport; it has write().
        self.transport = cast(asyncio.Transport, transport)
        self.h2 = ngh2.Connection(ngh2.Role.SERVER)
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        h2 = self.h2
        h2.receive_data(data)
        for event in h2.events():
            if isinstance(event, ngh2.DataReceived | ngh2.RequestReceived) and event.end_stream:
                h2.send_response(event.stream_id, HEADERS)
                h2.send_data(event.stream_id, FRAMED)
                h2.send_trailers(event.stream_id, TRAILERS)
        if out := h2.data_to_send():
            self.transport.write(out)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Constant, "127.0.0.1", port)
    print(f"serving on {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
