"""The Variant codec: Python values to and from `commons.Variant` (type tag + bytes).

Both halves use it: the model host decodes arguments and encodes results, the client does the
reverse. The byte layouts are the wire contract (proto/commons.proto; README "Values"):

- NONE: empty bytes; DOUBLE / INT: 8 bytes little-endian (binary64 / int64);
- STRING: UTF-8; JSON: UTF-8 JSON text (NaN/Infinity tokens accepted, as `json.dumps` writes them);
- PARQUET: a Parquet file (pandas DataFrame); ARROW: an Arrow IPC stream (pyarrow Table).

Every failure is a `VariantError` whose message says what was wrong and what to do.
"""

from __future__ import annotations

import json
import math
import operator
import struct
import sys
from typing import Any

import msgspec

from .generated.commons import Variant, VariantType

__all__ = ["INT64_MAX", "INT64_MIN", "MissingExtra", "VariantError", "check_value",
           "decode_value", "decode_variant",
           "encode_value", "encode_variant_value"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_DOUBLE = struct.Struct("<d")
_INT = struct.Struct("<q")
_DATAFRAMES_HINT = ("install pyarrow and pandas: pip install 'model-runner-client[dataframes]' "
                    "(a host alone: 'model-runner[dataframes]')")


class VariantError(ValueError):
    """A value that cannot be encoded, or bytes that do not decode as their declared type."""


class MissingExtra(VariantError):
    """A value this installation cannot decode for lack of an optional package (the
    `dataframes` extra): the reader's setup, not the sender's fault."""


# --- encoding ----------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    """Turn what JSON cannot hold natively into what it can, exactly (numpy, sets)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(obj, numpy.ndarray):
            return obj.tolist()
        if isinstance(obj, numpy.generic):
            return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"values of type {_type_name(obj)} cannot be encoded as JSON")


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


_json_encoder = msgspec.json.Encoder(enc_hook=_json_default)


def _encode_json(value: Any) -> bytes:
    try:
        data = _json_encoder.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise VariantError(f"cannot encode {_type_name(value)} as JSON: {exc}") from None
    # msgspec writes NaN and Infinity as `null`, which would silently lose them. Only when a
    # `null` appears can that have happened; then the standard library writes the exact tokens.
    if b"null" in data:
        try:
            data = json.dumps(value, default=_json_default, separators=(",", ":")).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise VariantError(f"cannot encode {_type_name(value)} as JSON: {exc}") from None
    return data


def encode_variant_value(value: Any) -> tuple[VariantType, bytes]:
    """Encode a Python value as a (VariantType, bytes) pair.

    None → NONE; float → DOUBLE; int (int64 range) → INT; str → STRING; pandas DataFrame →
    PARQUET; pyarrow Table → ARROW; numpy scalars and 0-d arrays as their Python equivalents;
    bool, dict, list, tuple, numpy arrays and everything else JSON holds exactly → JSON.
    """
    if value is None:
        return VariantType.NONE, b""
    cls = type(value)
    if cls is float:
        return VariantType.DOUBLE, _DOUBLE.pack(value)
    if cls is int:
        return VariantType.INT, _pack_int(value)
    if cls is str:
        return VariantType.STRING, _encode_str(value)
    if cls is bool or cls is dict or cls is list or cls is tuple:
        return VariantType.JSON, _encode_json(value)

    numpy = sys.modules.get("numpy")
    if numpy is not None and (
        isinstance(value, numpy.generic)
        or (isinstance(value, numpy.ndarray) and value.ndim == 0)
    ):
        return encode_variant_value(value.item())
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return VariantType.PARQUET, _encode_parquet(value)
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None and isinstance(value, pyarrow.Table):
        return VariantType.ARROW, _encode_arrow(value)
    if pandas is not None and isinstance(value, pandas.Series):
        raise VariantError(
            "cannot encode a pandas Series: return series.to_frame() (sent as PARQUET) "
            "or series.tolist() (sent as JSON)"
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise VariantError(
            f"cannot encode {_type_name(value)}: the protocol has no bytes type; "
            "send text (str), base64 in a string, or a list of ints"
        )
    # Subclasses of the builtins (IntEnum, np.float64, OrderedDict, ...) keep their base meaning.
    if isinstance(value, bool):
        return VariantType.JSON, _encode_json(bool(value))
    if isinstance(value, float):
        return VariantType.DOUBLE, _DOUBLE.pack(float(value))
    if isinstance(value, int):
        return VariantType.INT, _pack_int(int(value))
    if isinstance(value, str):
        return VariantType.STRING, _encode_str(str(value))
    return VariantType.JSON, _encode_json(value)


def encode_value(value: Any) -> Variant:
    """Encode a Python value as a `commons.Variant` message (see `encode_variant_value`)."""
    type_, data = encode_variant_value(value)
    return Variant(type=type_, value=data)


def encode_as(type_: int, value: Any) -> bytes:
    """Encode `value` as the Variant type the caller chose (the old client's `encode_data`)."""
    try:
        if type_ == VariantType.NONE:
            return b""
        if type_ == VariantType.DOUBLE:
            return _DOUBLE.pack(float(value))
        if type_ == VariantType.INT:
            return _pack_int(operator.index(value))
        if type_ == VariantType.STRING:
            return _encode_str(value)
        if type_ == VariantType.JSON:
            return _encode_json(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, VariantError):
            raise
        raise VariantError(f"cannot encode {_type_name(value)} as "
                           f"{VariantType(type_).name}: {exc}") from None
    if type_ == VariantType.PARQUET:
        return _encode_parquet(value)
    if type_ == VariantType.ARROW:
        return _encode_arrow(value)
    raise VariantError(f"unknown Variant type {type_!r}: use one of "
                       f"{', '.join(t.name for t in VariantType)}")


def _encode_str(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise VariantError(f"cannot encode the string as UTF-8 (lone surrogate?): {exc}") from None


def _pack_int(value: int) -> bytes:
    if not INT64_MIN <= value <= INT64_MAX:
        raise VariantError(
            f"int {value} is outside the int64 range of Variant INT; "
            "send it as a string, or as a float if precision may be lost"
        )
    return _INT.pack(value)


def _encode_parquet(frame: Any) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VariantError(
            f"encoding a DataFrame as PARQUET needs pyarrow: {_DATAFRAMES_HINT}") from None
    try:
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return bytes(sink.getvalue().to_pybytes())
    except Exception as exc:
        raise VariantError(f"cannot encode the DataFrame as PARQUET: {exc}") from None


def _encode_arrow(table: Any) -> bytes:
    import pyarrow as pa

    try:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())
    except Exception as exc:
        raise VariantError(f"cannot encode the Arrow table: {exc}") from None


# --- decoding ----------------------------------------------------------------------------------

_json_decoder = msgspec.json.Decoder()


def decode_value(type_: int, data: bytes) -> Any:
    """Decode the bytes of a Variant of the given type into a Python value."""
    if type_ == VariantType.NONE:
        return None
    if type_ == VariantType.DOUBLE:
        if len(data) != 8:
            raise VariantError(
                f"a DOUBLE must be 8 bytes (IEEE-754 little-endian), got {len(data)}")
        return _DOUBLE.unpack(data)[0]
    if type_ == VariantType.INT:
        if len(data) != 8:
            raise VariantError(f"an INT must be 8 bytes (int64 little-endian), got {len(data)}")
        return _INT.unpack(data)[0]
    if type_ == VariantType.STRING:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VariantError(f"a STRING must be valid UTF-8: {exc}") from None
    if type_ == VariantType.JSON:
        return decode_json(data)
    if type_ == VariantType.PARQUET:
        return _decode_parquet(data)
    if type_ == VariantType.ARROW:
        return _decode_arrow(data)
    raise VariantError(
        f"unknown Variant type {int(type_)}; known types are "
        + ", ".join(f"{t.name}={t.value}" for t in VariantType)
    )


def decode_json(data: bytes) -> Any:
    """Decode JSON text, accepting the NaN/Infinity tokens that Python's json module writes."""
    try:
        return _json_decoder.decode(data)
    except RecursionError:
        raise VariantError("JSON is nested too deeply to decode; flatten the value") from None
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 inside a string
        raise VariantError(f"JSON must be valid UTF-8: {exc}") from None
    except msgspec.DecodeError:
        pass  # maybe NaN/Infinity tokens, which msgspec rejects; the standard parser reads them
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_json_constant)
    except UnicodeDecodeError as exc:
        raise VariantError(f"JSON must be valid UTF-8: {exc}") from None
    except RecursionError:
        raise VariantError("JSON is nested too deeply to decode; flatten the value") from None
    except ValueError as exc:
        raise VariantError(f"invalid JSON: {exc}") from None


def _json_constant(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


def check_value(type_: int, data: bytes) -> None:
    """Whether `data` would decode as `type_`, at a fraction of the cost of decoding it: JSON is
    scanned without building objects (msgspec: ~1.5 ms per MiB against ~40 for decoding the
    costliest shape), PARQUET and ARROW by their framing. Raises VariantError as decoding would
    (decoding may still find a PARQUET or ARROW body corrupt)."""
    if type_ == VariantType.JSON:
        try:
            msgspec.json.decode(data, type=msgspec.Raw)
        except RecursionError:
            raise VariantError("JSON is nested too deeply to decode; flatten the value") from None
        except msgspec.DecodeError:
            decode_json(data)  # NaN/Infinity tokens pass there; anything else raises
    elif type_ == VariantType.PARQUET:
        if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
            raise VariantError("invalid PARQUET bytes: not framed by the PAR1 magic")
    elif type_ == VariantType.ARROW:
        if len(data) < 8:
            raise VariantError("invalid ARROW IPC stream bytes: too short")
    else:
        decode_value(type_, data)


def decode_variant(variant: Variant | None) -> Any:
    """Decode a `commons.Variant`; a missing Variant means None."""
    if variant is None:
        return None
    return decode_value(variant.type, variant.value)


def _decode_parquet(data: bytes) -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtra(
            f"decoding a PARQUET value needs pyarrow and pandas: {_DATAFRAMES_HINT}") from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        raise VariantError(f"invalid PARQUET bytes: {exc}") from None
    try:
        return table.to_pandas()
    except ImportError:
        raise MissingExtra(f"decoding a PARQUET value needs pandas: {_DATAFRAMES_HINT}") from None


def _decode_arrow(data: bytes) -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingExtra(f"decoding an ARROW value needs pyarrow: {_DATAFRAMES_HINT}") from None
    try:
        with pa.ipc.open_stream(pa.BufferReader(data)) as reader:
            return reader.read_all()
    except Exception as exc:
        raise VariantError(f"invalid ARROW IPC stream bytes: {exc}") from None
