"""Reading answers: the cheap check a large answer gets within a tick agrees with decoding it,
and a deferred value is decoded when its output is first read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_runner.wire import CallResponse, Status, Variant, VariantError, VariantType
from model_runner.wire.variant import check_value, decode_value
from model_runner_client.answers import read_call_answer
from model_runner_client.encoding import ResultDecoder
from model_runner_client.models import ModelEndpoint
from model_runner_client.outcomes import Kind
from model_runner_client.results import CallResult, CallStatus, DeferredOutput

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30)


def accepts(read: Callable[[int, bytes], object], type_: int, data: bytes) -> bool:
    """Whether `read` (decode_value, or the cheap check_value) takes these bytes."""
    try:
        read(type_, data)
    except VariantError:
        return False
    return True


@given(st.binary(max_size=200) | json_values.map(lambda v: msgspec.json.encode(v)))
def test_the_json_check_agrees_with_decoding(data: bytes) -> None:
    assert (accepts(check_value, VariantType.JSON, data)
            == accepts(decode_value, VariantType.JSON, data))


@given(json_values, st.integers(min_value=0, max_value=3))
def test_a_truncated_or_padded_json_document_is_caught(value: Any, cut: int) -> None:
    data = msgspec.json.encode(value)
    for mangled in (data[:len(data) - cut - 1], data + b"}" * (cut + 1)):
        assert (accepts(check_value, VariantType.JSON, mangled)
                == accepts(decode_value, VariantType.JSON, mangled))


def test_nan_tokens_pass_the_check_as_they_decode() -> None:
    assert accepts(check_value, VariantType.JSON, b"[NaN, Infinity, -Infinity]")


def test_deep_nesting_fails_the_check_with_the_decoder_s_message() -> None:
    with pytest.raises(VariantError, match="nested too deeply"):
        check_value(VariantType.JSON, b"[" * 200_000 + b"]" * 200_000)


def answer(value: bytes, type_: VariantType = VariantType.JSON) -> bytes:
    return bytes(CallResponse(status=Status(code="SUCCESS"),
                              method_response=Variant(type=type_, value=value)))


def result(outcome: Any) -> CallResult:
    return CallResult.make(ModelEndpoint("m", "127.0.0.1", 1, "d"), outcome.status,
                           outcome.output, outcome.latency_us, outcome.detail)


def test_a_deferred_answer_is_decoded_when_read_once() -> None:
    decoder = ResultDecoder(list[int])
    outcome = read_call_answer(answer(b"[1, 2, 3]"), 5, decoder, defer=True)
    assert outcome.kind is Kind.SUCCESS and isinstance(outcome.output, DeferredOutput)
    called = result(outcome)
    assert "not read yet" in repr(called)
    assert called.output == [1, 2, 3] and called.output is called.output  # decoded once


def test_a_malformed_answer_fails_its_check() -> None:
    outcome = read_call_answer(answer(b"[1, 2"), 5, ResultDecoder(), defer=True, check=True)
    assert outcome.status is CallStatus.FAILURE and "unreadable result" in outcome.detail


def test_an_unchecked_malformed_answer_raises_when_read() -> None:
    """Past the tick's budget the verdict is the host's status; the value raises when read."""
    outcome = read_call_answer(answer(b"[1, 2"), 5, ResultDecoder(), defer=True, check=False)
    assert outcome.status is CallStatus.SUCCESS
    with pytest.raises(VariantError, match="invalid JSON"):
        _ = result(outcome).output


def test_a_deferred_answer_not_of_returns_raises_when_read() -> None:
    outcome = read_call_answer(answer(b'["a"]'), 5, ResultDecoder(list[int]), defer=True)
    with pytest.raises(ValueError, match="does not match list"):
        _ = result(outcome).output
