"""A minimal reader for `CallResponse` bytes, for the client's hot path.

betterproto2 builds dataclasses through generic reflection (~170 µs per small message here);
a fan-out to 1,000 models reads 1,000 responses per tick, so the client reads the four fields
it needs directly from the protobuf wire format. Unknown fields are skipped as protobuf requires.
Property tests check it against betterproto2 and the protobuf runtime.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["LeanCallResponse", "parse_call_response"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class LeanCallResponse(NamedTuple):
    code: str
    message: str
    #: None when the response carries no methodResponse (the result is None).
    variant_type: int | None
    value: bytes


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field; repeated fields all appear."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            fields.append((number, wire, value))
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("length-delimited field runs past the end")
            fields.append((number, wire, data[pos:pos + length]))
            pos += length
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end")
    return fields


def _merge_len(fields: list[tuple[int, int, int | bytes]], number: int) -> bytes | None:
    """A sub-message field; protobuf merges repeated occurrences, i.e. concatenates them."""
    parts = [v for n, w, v in fields if n == number and isinstance(v, bytes)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _last_len(fields: list[tuple[int, int, int | bytes]], number: int) -> bytes:
    value = b""
    for n, _, v in fields:
        if n == number and isinstance(v, bytes):
            value = v
    return value


def _last_varint(fields: list[tuple[int, int, int | bytes]], number: int) -> int:
    value = 0
    for n, _, v in fields:
        if n == number and isinstance(v, int):
            value = v
    return value


def parse_call_response(data: bytes) -> LeanCallResponse:
    """Read a CallResponse; raises ValueError for bytes that are not one."""
    top = _fields(data)
    status = _merge_len(top, 1)
    code = message = ""
    if status is not None:
        status_fields = _fields(status)
        code = _last_len(status_fields, 1).decode("utf-8")
        message = _last_len(status_fields, 2).decode("utf-8")
    variant = _merge_len(top, 2)
    if variant is None:
        return LeanCallResponse(code, message, None, b"")
    variant_fields = _fields(variant)
    variant_type = _last_varint(variant_fields, 2)
    if variant_type >= 1 << 63:
        variant_type -= 1 << 64  # an enum is an int32 sent as a sign-extended varint
    return LeanCallResponse(code, message, variant_type, _last_len(variant_fields, 3))
