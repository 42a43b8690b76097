"""The lean CallResponse and SetupResponse readers agree with betterproto2 on every message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_runner.wire import CallResponse, SetupResponse, Status, Variant
from model_runner_client.lean import parse_call_response, parse_setup_response

variants = st.builds(Variant, type=st.integers(0, 6), value=st.binary(max_size=40))
responses = st.builds(
    CallResponse,
    status=st.none() | st.builds(Status, code=st.text(max_size=12), message=st.text(max_size=30)),
    method_response=st.none() | variants,
)


@given(responses)
def test_agrees_with_betterproto2(response: CallResponse) -> None:
    lean = parse_call_response(bytes(response))
    status = response.status or Status()
    assert (lean.code, lean.message) == (status.code, status.message)
    if response.method_response is None:
        assert lean.variant_type is None
    else:
        assert lean.variant_type == response.method_response.type
        assert lean.value == response.method_response.value


@given(responses, st.binary(max_size=8))
def test_skips_unknown_fields(response: CallResponse, payload: bytes) -> None:
    # Field 15 as bytes, then field 14 as a varint, then a fixed64 field 13: all unknown.
    extra = bytes([15 << 3 | 2, len(payload)]) + payload + bytes([14 << 3, 1]) \
        + bytes([13 << 3 | 1]) + b"\x00" * 8
    assert parse_call_response(bytes(response) + extra) == parse_call_response(bytes(response))


@given(st.binary(max_size=64))
def test_garbage_raises_value_error_or_parses(data: bytes) -> None:
    try:
        answer = parse_call_response(data)
    except ValueError as exc:
        assert "not a CallResponse" in str(exc)
    else:  # whatever parsed is well-typed: the fan-out reads it without further checks
        assert isinstance(answer.code, str) and isinstance(answer.message, str)
        assert answer.variant_type is None or isinstance(answer.variant_type, int)
        assert isinstance(answer.value, bytes)


def test_truncated_message() -> None:
    data = bytes(CallResponse(status=Status(code="SUCCESS"), method_response=Variant(
        type=1, value=b"\x00" * 8)))
    with pytest.raises(ValueError):
        parse_call_response(data[:-3])


statuses = st.none() | st.builds(Status, code=st.text(max_size=12), message=st.text(max_size=30))


@given(statuses)
def test_setup_response_agrees_with_betterproto2(status: Status | None) -> None:
    expected = status or Status()
    assert parse_setup_response(bytes(SetupResponse(status=status))) == (expected.code,
                                                                           expected.message)


@given(st.binary(max_size=64))
def test_setup_garbage_raises_value_error_or_parses(data: bytes) -> None:
    try:
        code, message = parse_setup_response(data)
    except ValueError as exc:
        assert "not a SetupResponse" in str(exc)
    else:
        assert isinstance(code, str) and isinstance(message, str)
