"""The `commons.Status.code` strings. Errors travel inside responses, not as gRPC statuses."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["StatusCode"]


class StatusCode(StrEnum):
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
