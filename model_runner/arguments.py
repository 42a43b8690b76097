"""The host's codec calls: a request's arguments as Python values, a result as a Variant.

Both run where the model runs (`model.ModelCore`): decoding before the model's turn, encoding on
the model's thread, so a large result never stalls the host's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .wire import VariantError, decode_value, encode_variant_value
from .wire.errors import describe

__all__ = [
    "MAX_ARGUMENTS",
    "MAX_KEYWORD_LENGTH",
    "RESPONSE_OVERHEAD",
    "Arguments",
    "decode_arguments",
    "encode_result",
]

#: What one request may hold. Real methods take a handful of arguments; without a bound, a
#: request of a million empty arguments (6 MB) costs the host seconds to turn into Python values.
MAX_ARGUMENTS = 1024
MAX_KEYWORD_LENGTH = 256
#: Bytes a CallResponse adds around the result value: tags, lengths, and the status message.
RESPONSE_OVERHEAD = 64


class _Data(Protocol):
    @property
    def type(self) -> Any: ...
    @property
    def value(self) -> bytes: ...


class _Positional(Protocol):
    @property
    def position(self) -> int: ...
    @property
    def data(self) -> _Data: ...


class _Keyword(Protocol):
    @property
    def keyword(self) -> str: ...
    @property
    def data(self) -> _Data: ...


#: Positional and keyword arguments, as the parsed request holds them (protobuf's messages).
Arguments = tuple[Sequence[_Positional], Sequence[_Keyword]]


def decode_arguments(arguments: Sequence[_Positional], kw_arguments: Sequence[_Keyword]) -> tuple[
    list[Any], dict[str, Any]
]:
    """A request's arguments as Python values; raises VariantError saying which one is wrong."""
    for what, items in (("positional", arguments), ("keyword", kw_arguments)):
        if len(items) > MAX_ARGUMENTS:  # counted before any is looked at
            raise VariantError(f"the request holds {len(items)} {what} arguments; a model host "
                               f"accepts at most {MAX_ARGUMENTS}: pass a list or a dict instead")
    args = []
    for argument in sorted(arguments, key=lambda a: a.position):
        try:
            args.append(decode_value(argument.data.type, argument.data.value))
        except VariantError as exc:
            raise VariantError(f"positional argument {argument.position}: {exc}") from None
    kwargs = {}
    for kw in kw_arguments:
        keyword = kw.keyword
        if len(keyword) > MAX_KEYWORD_LENGTH or not keyword.isidentifier():
            raise VariantError(f"keyword argument {keyword[:80]!r} is not a valid Python name "
                               f"(of at most {MAX_KEYWORD_LENGTH} characters)")
        try:
            kwargs[keyword] = decode_value(kw.data.type, kw.data.value)
        except VariantError as exc:
            raise VariantError(f"keyword argument {keyword!r}: {exc}") from None
    return args, kwargs


def encode_result(what: str, result: Any, max_send: int) -> tuple[int, bytes] | str | None:
    """`result` of `what` (e.g. "Tracker.predict") as (Variant type, value); None for None (no
    methodResponse means None on the wire); or why it cannot be sent, as a message."""
    if result is None:
        return None
    try:
        type_, value = encode_variant_value(result)
    except VariantError as exc:
        return f"the result of {what} could not be encoded: {exc}"
    except Exception as exc:  # a hostile __iter__/__float__ in user objects
        return f"the result of {what} ({type(result).__name__}) could not be encoded: " \
               f"{describe(exc)}"
    if len(value) + RESPONSE_OVERHEAD > max_send:
        return (f"the result of {what} is {len(value)} bytes, over this host's "
                f"--max-send-message-length of {max_send} bytes; return less data or raise the "
                "limit")
    return int(type_), value
