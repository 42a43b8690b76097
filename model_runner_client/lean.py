"""Minimal readers for the answers a client reads from hosts: `CallResponse` (the hot path)
and `SetupResponse`, with protobuf's C parser (a 4 MiB Setup answer of one field repeated:
14 ms, against 4.5 s in betterproto2, on the client's loop).

A fan-out to 1,000 models reads 1,000 answers per tick, so the client reads the four fields it
needs with protobuf's C parser (upb): 1.1 µs per small answer here, against 5.2 µs for the
hand-written wire-format reader this replaced and ~16 µs for betterproto2's dataclasses.
Property tests check it against betterproto2.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from model_runner.wire.pb2.dynamic_subclass_pb2 import CallResponse, SetupResponse

__all__ = ["LeanCallResponse", "parse_call_response", "parse_setup_response"]


class LeanCallResponse(NamedTuple):
    code: str
    message: str
    #: None when the answer holds no methodResponse (which means None).
    variant_type: int | None
    value: bytes


def parse_call_response(data: bytes) -> LeanCallResponse:
    """Read a CallResponse; raises ValueError for bytes that are not one."""
    try:
        answer = CallResponse.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a CallResponse: {exc}") from None
    status = answer.status
    if not answer.HasField("methodResponse"):
        return LeanCallResponse(status.code, status.message, None, b"")
    variant = answer.methodResponse
    return LeanCallResponse(status.code, status.message, int(variant.type), variant.value)


def parse_setup_response(data: bytes) -> tuple[str, str]:
    """Read a SetupResponse: its status (code, message), ("", "") when it has none (how older
    hosts answer success); raises ValueError for bytes that are not one."""
    try:
        answer = SetupResponse.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a SetupResponse: {exc}") from None
    return answer.status.code, answer.status.message
