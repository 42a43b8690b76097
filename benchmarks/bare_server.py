"""Baseline for benchmarks: a bare grpclib server answering Call with a constant CallResponse.

    python benchmarks/bare_server.py PORT [--hang] [--uvloop] [--raw]

It uses the generated betterproto2 service base as-is: decode the request, return a constant;
and grpclib's health service, as hosts have. With --hang, Call never answers (a model stuck
forever). With --uvloop, it runs on uvloop, as our host does when uvloop is installed: the
floor of grpclib itself, for benchmarks/host_cost.py. With --raw, Call reads the request's bytes
and answers constant bytes, with no message library at all (grpclib's own cost alone).
"""

from __future__ import annotations

import asyncio
import sys

from fanout_common import raise_file_limit  # (benchmarks/, run as a script)
from grpclib.const import Cardinality, Handler
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.server import Server, Stream

from model_runner.codec import PassthroughCodec
from model_runner.wire import (
    CALL_PATH,
    SETUP_PATH,
    CallResponse,
    SetupResponse,
    Status,
    encode_value,
)
from model_runner.wire.generated.dynamic_subclass import (
    CallRequest,
    DynamicSubclassServiceBase,
    SetupRequest,
)

RESPONSE = CallResponse(status=Status(code="SUCCESS"), method_response=encode_value(1.0))


class Constant(DynamicSubclassServiceBase):
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang

    async def setup(self, message: SetupRequest) -> SetupResponse:
        return SetupResponse(status=Status(code="SUCCESS"))

    async def call(self, message: CallRequest) -> CallResponse:
        if self.hang:
            await asyncio.Event().wait()
        return RESPONSE


class Raw:
    """Call and Setup over bytes (PassthroughCodec): grpclib's cost with nothing on top."""

    answer = bytes(RESPONSE)

    def __mapping__(self) -> dict[str, Handler]:
        return {CALL_PATH: Handler(self.reply, Cardinality.UNARY_UNARY, bytes, bytes),
                SETUP_PATH: Handler(self.reply, Cardinality.UNARY_UNARY, bytes, bytes)}

    async def reply(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(self.answer)


async def main(port: int, hang: bool, raw: bool = False) -> None:
    if raw:
        server = Server([Raw()], codec=PassthroughCodec())
        await server.start("127.0.0.1", port, backlog=2048)
        print(f"serving on {port}", flush=True)
        await server.wait_closed()
        return
    service = Constant(hang)
    # Clients probe the model service's health after a timeout, as hosts serve it.
    server = Server([service, Health({service: [ServiceStatus()], OVERALL: [ServiceStatus()]})])
    await server.start("127.0.0.1", port, backlog=2048)  # benchmarks connect 1,000 at once
    print(f"serving on {port}", flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    raise_file_limit()  # thousands of models connect
    if "--uvloop" in sys.argv[2:]:
        import uvloop
        uvloop.run(main(int(sys.argv[1]), "--hang" in sys.argv[2:], "--raw" in sys.argv[2:]))
    else:
        asyncio.run(main(int(sys.argv[1]), "--hang" in sys.argv[2:]))
