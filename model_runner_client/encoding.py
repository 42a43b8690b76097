"""Arguments to request bytes, once per call; answers to Python values, checked by `returns=`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from model_runner.wire import (
    Argument,
    CallRequest,
    KwArgument,
    SetupRequest,
    Variant,
    VariantError,
    VariantType,
    decode_value,
    encode_value,
)
from model_runner.wire.variant import decode_json

__all__ = ["ArgumentError", "ResultDecoder", "encode_call", "encode_setup"]


class ArgumentError(ValueError):
    """An argument that cannot be sent: raised by `call` before anything is sent."""


def _variant(value: Any, where: str) -> Variant:
    if isinstance(value, Variant):
        return value  # the caller encoded it already
    try:
        return encode_value(value)
    except VariantError as exc:
        raise ArgumentError(f"{where}: {exc}") from None


def _arguments(args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> tuple[
    list[Argument], list[KwArgument]
]:
    positional = [Argument(position=i, data=_variant(a, f"positional argument {i}"))
                  for i, a in enumerate(args)]
    keywords = []
    for key, value in (kwargs or {}).items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ArgumentError(f"keyword argument {key!r} is not a valid Python name")
        keywords.append(KwArgument(keyword=key, data=_variant(value, f"keyword argument {key!r}")))
    return positional, keywords


def encode_call(method: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> bytes:
    if not method or not isinstance(method, str):
        raise ArgumentError(f"method name {method!r} must be a non-empty string")
    positional, keywords = _arguments(args, kwargs)
    return bytes(CallRequest(method_name=method, method_arguments=positional,
                             method_kw_arguments=keywords))


def encode_setup(class_name: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> bytes:
    positional, keywords = _arguments(args, kwargs)
    return bytes(SetupRequest(class_name=class_name, instance_arguments=positional,
                              instance_kw_arguments=keywords))


class ResultDecoder:
    """Decodes a result Variant; with `returns=T`, validates it as T (msgspec)."""

    def __init__(self, returns: Any = None) -> None:
        self.returns = returns
        self._json: msgspec.json.Decoder[Any] | None = (
            msgspec.json.Decoder(returns) if returns is not None else None)

    def __call__(self, variant_type: int | None, value: bytes) -> Any:
        """Raises ValueError with a message for the result's `detail`."""
        if variant_type is None:
            decoded = None
        elif variant_type == VariantType.JSON and self._json is not None:
            try:
                return self._json.decode(value)  # decode and validate in one pass
            except msgspec.ValidationError as exc:
                raise ValueError(f"result does not match {_type_name(self.returns)}: {exc}") \
                    from None
            except (msgspec.DecodeError, UnicodeDecodeError):
                decoded = decode_json(value)  # NaN/Infinity tokens: read, then validate below
        else:
            decoded = decode_value(variant_type, value)
        if self.returns is None:
            return decoded
        try:
            return msgspec.convert(decoded, self.returns)
        except msgspec.ValidationError as exc:
            raise ValueError(f"result does not match {_type_name(self.returns)}: {exc}") from None


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp)  # list[float] reprs as itself
