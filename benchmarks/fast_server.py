"""A bare gRPC server on ngh2 answering constants: cheap enough that a fan-out benchmark
measures the client, not the server.

    python benchmarks/fast_server.py PORT [--hang] [--delay SECONDS] [--json-mib MIB]

Setup and Call get SUCCESS (Call with the result 1.0), health Check gets SERVING; with --hang,
Call never answers; with --delay, Call answers that many seconds after the request; with
--json-mib, Call answers about that many MiB of the costliest JSON to decode (nested lists of
small numbers). Two grpclib servers on one core answered ~2,000 calls/s, so a 1,000-model
tick took ~0.5 s whatever the client did.
"""

from __future__ import annotations

import argparse
import asyncio

import ngh2
from fanout_common import raise_file_limit  # (benchmarks/, run as a script)
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from model_runner.wire import CallResponse, Status, encode_value


def _framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


# SetupResponse and CallResponse both hold their Status as field 1: one answer serves both.
CALL_ANSWER = _framed(bytes(CallResponse(status=Status(code="SUCCESS"),
                                         method_response=encode_value(1.0))))
HEALTH_ANSWER = _framed(HealthCheckResponse(status=HealthCheckResponse.SERVING)
                        .SerializeToString())
HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


def heavy_answer(mib: float) -> bytes:
    """A framed CallResponse holding ~`mib` MiB of nested JSON lists (~40 ms/MiB to decode)."""
    import msgspec

    from model_runner.wire import Variant, VariantType
    rows = int(mib * 1024 * 1024 / 23)
    value = msgspec.json.encode([[i % 997, [1, 2]] for i in range(rows)])
    return _framed(bytes(CallResponse(status=Status(code="SUCCESS"),
                                      method_response=Variant(type=VariantType.JSON,
                                                              value=value))))


class _Server(asyncio.Protocol):
    def __init__(self, hang: bool, delay: float = 0.0, answer: bytes = CALL_ANSWER) -> None:
        self.hang = hang
        self.delay = delay
        self.answer = answer
        self.h2 = ngh2.Connection(ngh2.Role.SERVER)
        self.paths: dict[int, bytes] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.h2.receive_data(data)
        except ngh2.NGH2Error:
            if self.transport is not None:
                self.transport.close()
            return
        for event in self.h2.events():
            if isinstance(event, ngh2.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers).get(b":path", b"")
            elif isinstance(event, ngh2.DataReceived) and event.end_stream:
                if self.delay and self.paths.get(event.stream_id, b"").endswith(b"/Call"):
                    asyncio.get_running_loop().call_later(self.delay, self._answer_later,
                                                          event.stream_id)
                else:
                    self._answer(event.stream_id)
            elif isinstance(event, ngh2.StreamClosed):
                self.paths.pop(event.stream_id, None)
        self._flush()

    def _answer(self, stream_id: int) -> None:
        path = self.paths.get(stream_id, b"")
        if path.endswith(b"/Check"):
            answer = HEALTH_ANSWER
        elif path.endswith(b"/Call") and self.hang:
            return
        elif path.endswith(b"/Call"):
            answer = self.answer
        else:
            answer = CALL_ANSWER
        self.h2.send_response(stream_id, HEADERS)
        self.h2.send_data(stream_id, answer)
        self.h2.send_trailers(stream_id, TRAILERS)

    def _answer_later(self, stream_id: int) -> None:
        if stream_id in self.paths:
            try:
                self._answer(stream_id)
            except ngh2.NGH2Error:
                return  # the client gave up on it meanwhile
            self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


async def main(port: int, hang: bool, delay: float, json_mib: float) -> None:
    loop = asyncio.get_running_loop()
    answer = heavy_answer(json_mib) if json_mib else CALL_ANSWER
    server = await loop.create_server(lambda: _Server(hang, delay, answer), "127.0.0.1", port,
                                      backlog=4096)
    print(f"serving on {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("port", type=int)
    parser.add_argument("--hang", action="store_true", help="never answer Call")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each Call "
                        "answer (default 0)")
    parser.add_argument("--json-mib", type=float, default=0.0, help="answer Call with about "
                        "this many MiB of nested JSON (default: the result 1.0)")
    options = parser.parse_args()
    raise_file_limit()  # thousands of models connect
    asyncio.run(main(options.port, options.hang, options.delay, options.json_mib))
