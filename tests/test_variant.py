"""The Variant codec: every type round-trips; bad bytes and values get clear errors."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_runner.wire import VariantError, VariantType, decode_value, encode_variant_value
from model_runner.wire.variant import INT64_MAX, INT64_MIN

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def roundtrip(value: Any) -> tuple[VariantType, Any]:
    type_, data = encode_variant_value(value)
    return type_, decode_value(type_, data)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_double(value: float) -> None:
    type_, back = roundtrip(value)
    assert type_ is VariantType.DOUBLE and same(back, value)
    assert encode_variant_value(value)[1] == struct.pack("<d", value)


@given(st.integers(INT64_MIN, INT64_MAX))
def test_int(value: int) -> None:
    assert roundtrip(value) == (VariantType.INT, value)
    assert encode_variant_value(value)[1] == value.to_bytes(8, "little", signed=True)


@given(st.integers(min_value=INT64_MAX + 1) | st.integers(max_value=INT64_MIN - 1))
def test_int_outside_int64_is_an_error(value: int) -> None:
    with pytest.raises(VariantError, match="int64"):
        encode_variant_value(value)


@given(st.text())
def test_string(value: str) -> None:
    assert roundtrip(value) == (VariantType.STRING, value)


@given(json_values.filter(lambda v: isinstance(v, (list, dict, bool))))
def test_json(value: Any) -> None:
    type_, back = roundtrip(value)
    assert type_ is VariantType.JSON and same(back, value)


@given(json_values)
def test_reads_what_python_json_writes(value: Any) -> None:
    assert same(decode_value(VariantType.JSON, json.dumps(value).encode()), value)


def test_none_and_tuples_and_numpy() -> None:
    assert roundtrip(None) == (VariantType.NONE, None)
    assert roundtrip((1, "a")) == (VariantType.JSON, [1, "a"])
    assert roundtrip(np.float32(1.5)) == (VariantType.DOUBLE, 1.5)
    assert roundtrip(np.int64(-3)) == (VariantType.INT, -3)
    assert roundtrip(np.bool_(True)) == (VariantType.JSON, True)
    assert roundtrip(np.array([[1, 2], [3, 4]])) == (VariantType.JSON, [[1, 2], [3, 4]])
    assert roundtrip(np.array(2.5)) == (VariantType.DOUBLE, 2.5)
    assert roundtrip({"a": np.arange(3), "b": np.float64(0.5)}) == (
        VariantType.JSON, {"a": [0, 1, 2], "b": 0.5})
    type_, back = roundtrip({"x": [math.nan, math.inf, -math.inf, None]})
    assert type_ is VariantType.JSON and same(back, {"x": [math.nan, math.inf, -math.inf, None]})


def test_dataframes() -> None:
    frame = pd.DataFrame({"price": [1.5, 2.5], "asset": ["BTC", "ETH"]})
    type_, back = roundtrip(frame)
    assert type_ is VariantType.PARQUET
    pd.testing.assert_frame_equal(back, frame)
    table = pa.table({"a": [1, 2, 3]})
    type_, back = roundtrip(table)
    assert type_ is VariantType.ARROW and back.equals(table)


@pytest.mark.parametrize("value,needle", [
    (b"raw", "no bytes type"),
    (object(), "object"),
    (pd.Series([1, 2]), "to_frame"),
    ("\ud800", "UTF-8"),
])
def test_unencodable_values_name_the_problem(value: Any, needle: str) -> None:
    with pytest.raises(VariantError, match=needle):
        encode_variant_value(value)


@pytest.mark.parametrize("type_,data,needle", [
    (VariantType.DOUBLE, b"\x00" * 7, "8 bytes"),
    (VariantType.INT, b"\x00" * 9, "8 bytes"),
    (VariantType.STRING, b"\xff\xfe", "UTF-8"),
    (VariantType.JSON, b"{not json", "invalid JSON"),
    (VariantType.JSON, b"\xff", "UTF-8"),
    (VariantType.JSON, b"[" * 100000 + b"]" * 100000, "JSON"),
    (VariantType.PARQUET, b"not parquet", "PARQUET"),
    (VariantType.ARROW, b"not arrow", "ARROW"),
    (42, b"", "unknown Variant type 42"),
])
def test_bad_bytes_get_clear_errors(type_: int, data: bytes, needle: str) -> None:
    with pytest.raises(VariantError, match=needle):
        decode_value(type_, data)


@given(st.integers(0, 10), st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_variant_error(type_: int, data: bytes) -> None:
    try:
        value = decode_value(type_, data)
    except VariantError as exc:
        assert str(exc)  # a message saying what was wrong
    else:  # what decodes is of the declared type
        expected = {int(VariantType.NONE): type(None), int(VariantType.DOUBLE): float,
                    int(VariantType.INT): int, int(VariantType.STRING): str}.get(type_)
        if expected is not None:
            assert isinstance(value, expected)


def test_dates_travel_as_iso_strings_as_the_readme_says() -> None:
    import datetime
    import uuid

    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    ident = uuid.UUID(int=7)
    variant_type, data = encode_variant_value({"t": moment, "d": moment.date(), "u": ident})
    assert variant_type is VariantType.JSON
    decoded = decode_value(variant_type, data)
    assert decoded == {"t": "2026-01-02T03:04:05", "d": "2026-01-02", "u": str(ident)}
    assert datetime.datetime.fromisoformat(decoded["t"]) == moment
