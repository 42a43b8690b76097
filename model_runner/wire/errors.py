"""Exceptions as text, for messages both halves show."""

from __future__ import annotations

__all__ = ["describe"]


def describe(exc: BaseException) -> str:
    """`Type: message` of any exception; `__str__` is user code and may itself raise."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException:
        try:
            text = repr(exc)
        except BaseException:
            text = "(its message could not be read: __str__ and __repr__ raised)"
    return f"{name}: {text}" if text else name
