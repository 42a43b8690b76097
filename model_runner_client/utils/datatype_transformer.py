"""model-runner-client 0.14's value helpers: `encode_data`, `decode_data`, `detect_data_type`.

Same signatures and types (commons_pb2 `VariantType` values); the bytes come from the wire
layer's Variant codec, so they are what the rest of this library sends and reads. Beyond the old
helpers: numpy values encode, ARROW works, JSON keeps NaN/Infinity as Python's json does.
"""

from __future__ import annotations

import sys
from typing import Any

from model_runner.wire import VariantError, decode_value, encode_as

from ..grpc.generated.commons_pb2 import VariantType

__all__ = ["decode_data", "detect_data_type", "encode_data"]


def encode_data(data_type: int, data: Any) -> bytes:
    """`data` as the bytes of a Variant of `data_type`; raises ValueError when it cannot be."""
    return encode_as(data_type, data)


def decode_data(data_bytes: bytes, data_type: int) -> Any:
    """The value in a Variant's bytes; raises ValueError when they do not hold one."""
    return decode_value(data_type, data_bytes)


def detect_data_type(data: Any) -> int:
    """The VariantType the old client picked for a value: None, float, int (bool too), str,
    a pandas DataFrame, a dict or a list; anything else raises ValueError."""
    if data is None:
        return VariantType.NONE
    if isinstance(data, float):
        return VariantType.DOUBLE
    if isinstance(data, int):
        return VariantType.INT
    if isinstance(data, str):
        return VariantType.STRING
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return VariantType.PARQUET
    if isinstance(data, dict | list):
        return VariantType.JSON
    raise VariantError(f"unsupported data type: {type(data).__name__} (send None, float, int, "
                       "str, a pandas DataFrame, a dict or a list)")
