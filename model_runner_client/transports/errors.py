"""What a transport's call can end with, and the Outcome each is: the one place call errors map.

Every transport lets out only these (transports/__init__.py lists them; each maps its own
library's exceptions at its boundary): TimeoutError, GRPCError (a gRPC status other than OK),
OSError (unreachable, reset, TLS), ResponseTooLarge and UntrustedHost. Anything else is a bug of
ours, logged with its traceback and never counted against the model.
"""

from __future__ import annotations

import logging
import ssl

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from model_runner.wire.errors import describe

from ..models import ModelEndpoint
from ..outcomes import Kind, Outcome
from ..transport_security import UntrustedHost
from . import ResponseTooLarge

__all__ = ["outcome_of_error", "setup_outcome_of_error"]

logger = logging.getLogger(__name__)

# gRPC statuses that mean "did not answer in time" rather than "answered wrongly". Existing
# servers reject a second concurrent call with RESOURCE_EXHAUSTED "Server busy".
_TIMEOUT_STATUSES = {GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.RESOURCE_EXHAUSTED,
                     GrpcStatus.CANCELLED}
#: How hosts word a call refused because the model is still running another: crunch-model-runner
#: answers exactly this, ours adds what the model runs (model_runner/serial.py).
_BUSY = "Server busy"


def outcome_of_error(endpoint: ModelEndpoint, exc: BaseException, latency: int) -> Outcome:
    """How a call that ended in `exc` counts."""
    if isinstance(exc, TimeoutError):
        return Outcome(Kind.TIMEOUT, latency_us=latency,
                       detail="no answer before the deadline")
    if isinstance(exc, GRPCError):
        return _from_grpc_error(latency, exc)
    if isinstance(exc, UntrustedHost):
        return Outcome(Kind.UNTRUSTED, latency_us=latency,
                       detail=f"the host failed the identity check: {exc}")
    if isinstance(exc, ResponseTooLarge):
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency,
                       detail=str(exc))
    if isinstance(exc, ssl.SSLError):
        return Outcome(Kind.REFUSED, latency_us=latency,
                       detail=f"TLS failed: {exc}; check the client's TLS settings")
    if isinstance(exc, OSError | EOFError):
        return Outcome(Kind.UNREACHABLE, latency_us=latency,
                       detail=f"unreachable: {describe(exc)}")
    # Anything else is a bug of ours (it once counted as an unreachable model, logged at DEBUG,
    # and ended in a CONNECTION_FAILED report): never the model's.
    logger.error("bug: the call to %s raised %s", endpoint, type(exc).__name__,
                 exc_info=exc)
    return Outcome(Kind.CLIENT_BUG, latency_us=latency,
                   detail=f"not counted: a bug in model-runner-client ({type(exc).__name__}: "
                          f"{exc}); please report it")


def _from_grpc_error(latency: int, exc: GRPCError) -> Outcome:
    detail = f"gRPC {exc.status.name}: {exc.message or ''}".rstrip(": ")
    if exc.status is GrpcStatus.DEADLINE_EXCEEDED:  # the host's side of the same deadline
        return Outcome(Kind.TIMEOUT, latency_us=latency,
                       detail=f"no answer before the deadline ({detail} from the host)")
    if exc.status is GrpcStatus.RESOURCE_EXHAUSTED and (exc.message or "").startswith(_BUSY):
        return Outcome(Kind.BUSY, latency_us=latency,
                       detail=f"the model is still running an earlier call ({detail})")
    if exc.status in _TIMEOUT_STATUSES:
        return Outcome(Kind.TIMEOUT, latency_us=latency, detail=detail)
    if exc.status in (GrpcStatus.UNAUTHENTICATED, GrpcStatus.PERMISSION_DENIED):
        return Outcome(Kind.REFUSED, latency_us=latency,
                       detail=f"{detail}; check the client's auth_token / TLS settings")
    if exc.status is GrpcStatus.UNAVAILABLE:
        return Outcome(Kind.UNREACHABLE, latency_us=latency, detail=detail)
    return Outcome(Kind.MODEL_FAILURE, latency_us=latency, detail=detail)


def setup_outcome_of_error(endpoint: ModelEndpoint, exc: BaseException) -> Outcome:
    """How a Setup that ended in an exception counts: as a call would, except that a gRPC error
    other than INTERNAL is no model host's answer (a proxy, some other server on the port): it
    is tried again, like an unreachable host. INTERNAL is how older hosts say the constructor
    raised: the model's fault, final."""
    outcome = outcome_of_error(endpoint, exc, 0)
    if isinstance(exc, GRPCError) and outcome.kind is Kind.MODEL_FAILURE:
        if exc.status is GrpcStatus.INTERNAL:
            return outcome._replace(detail=f"Setup failed: gRPC INTERNAL: {exc.message}")
        return outcome._replace(kind=Kind.UNREACHABLE)
    return outcome
