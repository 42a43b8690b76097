"""The `commons.Status.code` strings. Errors travel inside responses, not as gRPC statuses."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["StatusCode", "missing_method", "names_missing_method", "names_unimportable_base",
           "unimportable_base"]


class StatusCode(StrEnum):
    """What a host answers in a response's Status (the wire's vocabulary, both halves read it;
    gRPC's own statuses are for transport errors only)."""

    SUCCESS = "SUCCESS"
    #: The caller's mistake: empty class or method name, a private method, bad arguments.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    #: Call before Setup (or after Rest).
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    #: No subclass of the base found, base class not importable, method missing on the model.
    BAD_IMPLEMENTATION = "BAD_IMPLEMENTATION"
    #: The model's constructor raised.
    SETUP_FAILED = "SETUP_FAILED"
    #: The method raised, or its result could not be encoded.
    MODEL_FAILED = "MODEL_FAILED"
    UNKNOWN = "UNKNOWN"


# Two failures whose cause may be the coordinator's rather than the model's: the host says them
# in these words (inside a BAD_IMPLEMENTATION status), so that a client can tell when every
# model fails the same way (model_runner_client/blame.py).

_NO_METHOD = " has no method "
_UNIMPORTABLE = " is not importable"
_NOT_DOTTED = " is not a full dotted path"


def missing_method(cls_name: str, name: str) -> str:
    return f"{cls_name}{_NO_METHOD}{name!r}; implement it as the base class declares"


def names_missing_method(message: str) -> bool:
    return _NO_METHOD in message


def unimportable_base(class_name: str, why: str) -> str:
    return f"base class {class_name!r}{_UNIMPORTABLE}: {why}"


def names_unimportable_base(message: str) -> bool:
    return message.startswith("base class ") and (_UNIMPORTABLE in message
                                                   or _NOT_DOTTED in message)
