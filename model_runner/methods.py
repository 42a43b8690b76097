"""`Method`: a model method as resolved once per instance, without running the model's code."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from .wire.codes import missing_method

__all__ = ["Method"]

_MISSING = object()


@dataclass(frozen=True)
class Method:
    """How to call a model method, or why it cannot be called."""

    cls_name: str
    name: str
    #: Why the method cannot be called (the model's fault: BAD_IMPLEMENTATION), or None.
    error: str | None = None
    is_async: bool = False
    #: Keyword names the method takes; None when it takes **kwargs (or has no signature).
    accepted: frozenset[str] | None = None
    signature: inspect.Signature | None = None

    @classmethod
    def resolve(cls, instance: Any, name: str) -> Method:
        cls_name = type(instance).__qualname__
        # getattr_static runs no user code: a property or __getattr__ is never evaluated.
        attribute = inspect.getattr_static(instance, name, _MISSING)
        if attribute is _MISSING:
            return cls(cls_name, name, missing_method(cls_name, name))
        if not _is_method_like(attribute):
            return cls(cls_name, name,
                       f"{cls_name}.{name} is a {type(attribute).__name__}, not a method")
        method = getattr(instance, name)
        try:
            signature: inspect.Signature | None = inspect.signature(method)
        except (TypeError, ValueError):
            signature = None  # builtins and C callables: the call itself decides
        accepted = None
        if signature is not None:
            params = signature.parameters.values()
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                accepted = frozenset(
                    p.name for p in params
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  inspect.Parameter.KEYWORD_ONLY))
        return cls(cls_name, name, None, inspect.iscoroutinefunction(method), accepted, signature)

    def binding_problem(self, args: list[Any], kwargs: dict[str, Any]) -> str | None:
        """Why these arguments do not fit the signature (the caller's mistake), or None."""
        if self.signature is None:
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            return f"arguments do not match {self.cls_name}.{self.name}{self.signature}: {exc}"
        return None


def _is_method_like(attribute: Any) -> bool:
    if isinstance(attribute, (staticmethod, classmethod)):
        return True
    if isinstance(attribute, property):
        return False
    return callable(attribute)
