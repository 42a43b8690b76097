"""Model Runner Client: call many remote models at once, each call with a deadline."""

from .client import ModelRunnerClient, ModelSource, StaticModels, UnknownModelError
from .encoding import ArgumentError
from .events import EventKind, FailureReport, ModelEvent
from .models import ModelEndpoint
from .results import CallResult, CallResults, CallStatus

__all__ = [
    "ArgumentError",
    "CallResult",
    "CallResults",
    "CallStatus",
    "EventKind",
    "FailureReport",
    "ModelEndpoint",
    "ModelEvent",
    "ModelRunnerClient",
    "ModelSource",
    "StaticModels",
    "UnknownModelError",
]
