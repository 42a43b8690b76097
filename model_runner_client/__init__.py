"""Model Runner Client: call many remote models at once, each call with a deadline."""

from model_runner.wire.tls import client_tls_context

from .client import ClientOptions, ModelRunnerClient, UnknownModelError
from .encoding import ArgumentError
from .events import EventKind, FailureReport, ModelEvent, ReportCode
from .models import ModelEndpoint
from .orchestrator import OrchestratorLink
from .results import CallResult, CallResults, CallStatus
from .sources import ModelRegistry, ModelSource, StaticModels

__all__ = [
    "ArgumentError",
    "CallResult",
    "CallResults",
    "CallStatus",
    "ClientOptions",
    "EventKind",
    "FailureReport",
    "ModelEndpoint",
    "ModelEvent",
    "ModelRegistry",
    "ModelRunnerClient",
    "ModelSource",
    "OrchestratorLink",
    "ReportCode",
    "StaticModels",
    "UnknownModelError",
    "client_tls_context",
]
