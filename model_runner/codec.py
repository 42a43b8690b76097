"""A grpclib codec that lets callers send and receive already-encoded message bytes.

Encoding a request once and sending the same bytes to every model is what makes a large fan-out
cheap; on the server, a response encoded once can be size-checked before it is sent. Messages
that are not bytes (the health service's protobuf messages, betterproto2 messages) go through
the usual `SerializeToString` / `FromString` path.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.proto import ProtoCodec

__all__ = ["PassthroughCodec"]


class PassthroughCodec(ProtoCodec):
    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message)
        return message.SerializeToString()  # type: ignore[no-any-return]

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return data
        return message_type.FromString(data)
