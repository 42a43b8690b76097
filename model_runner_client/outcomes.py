"""How a call ended, in one place: an answer, an error or a missing answer becomes an `Outcome`
whose `Kind` says why. Model calls (fanout.py), Setups and health probes (supervision.py) are
classified here; the failure policy, the reports, the results and the metrics read the Kind.
"""

from __future__ import annotations

import logging
import ssl
from enum import Enum
from typing import NamedTuple

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckResponse
from h2.exceptions import ProtocolError as H2ProtocolError

from model_runner.wire import MissingExtra, StatusCode, VariantError
from model_runner.wire.codes import names_missing_method, names_unimportable_base
from model_runner.wire.errors import describe
from model_runner.wire.lean import parse_call_response, parse_setup_response
from model_runner.wire.variant import check_value

from .encoding import ResultDecoder
from .models import ModelEndpoint
from .policy import Check, Counted
from .results import CallStatus, DeferredOutput
from .transport_security import UntrustedHost
from .transports import ResponseTooLarge

__all__ = ["MEANING", "Kind", "Meaning", "Outcome", "SetupEnd", "outcome_of_error",
           "read_answer", "read_health_answer", "read_setup_answer", "setup_outcome_of_error"]

logger = logging.getLogger(__name__)


class Kind(Enum):
    """Why a call (a model call, a Setup, a health probe) ended as it did. What each means to
    the policy, the blame, Setup and the results is its row in MEANING, below; the metrics
    label calls with it."""

    SUCCESS = "success"
    MODEL_FAILURE = "model failure"
    #: The host lost its model instance (FAILED_PRECONDITION: it restarted): Setup must run
    #: again. Counted as a timeout (the model itself did nothing wrong), though the host
    #: answered.
    NEEDS_SETUP = "needs setup"
    TIMEOUT = "timeout"
    #: The host answered at once that the model is still running an earlier call, one whose
    #: caller gave up (RESOURCE_EXHAUSTED "Server busy"): a timeout, but one that cost nothing,
    #: so it needs no cooling down and no health probe (the host just answered).
    BUSY = "busy"
    UNREACHABLE = "unreachable"
    #: Not sent: the bound on calls in flight held it until the deadline.
    NOT_SENT = "not sent"
    #: Not called: skipped while cooling down after timeouts (policy.py).
    SKIPPED = "skipped"
    #: Not called: the model is still connecting or being set up.
    SETTING_UP = "setting up"
    #: Not called: the model has left.
    LEFT = "left"
    #: The host refused our credentials (token, certificate): the coordinator's configuration.
    REFUSED = "refused"
    #: The host failed the identity check of the security mode: it is not the cruncher's.
    UNTRUSTED = "untrusted"
    #: The model has no such method: its fault, unless no model that answered has it
    #: (blame.py: then the coordinator's method name is wrong).
    MISSING_METHOD = "missing method"
    #: The coordinator's side: a method no model has, an answer this client cannot decode for
    #: lack of an optional package. Never counted against a model.
    COORDINATOR = "coordinator's mistake"
    #: A bug of ours (logged with its traceback). Never counted against a model.
    CLIENT_BUG = "client bug"
    #: Setup: the host cannot import the Crunch's base class. The submission's fault, unless
    #: no host can (then the coordinator's base_classname is wrong: registry.py waits to know).
    MISSING_BASE_CLASS = "missing base class"


class SetupEnd(Enum):
    """What a Setup that ended so (after its retries), or the check after a timeout, does to
    the model (registry.py)."""

    READY = "ready: called from the next tick"
    BAD_IMPLEMENTATION = "disconnected, reported BAD_IMPLEMENTATION"
    CONNECTION_FAILED = "disconnected, reported CONNECTION_FAILED"
    #: The submission's fault if another host imports it, else likely base_classname:
    #: reports.py holds the report back until it knows.
    BASE_CLASS = "disconnected; reported BAD_IMPLEMENTATION once some host imports the class"
    #: The coordinator's token, certificates, base class or arguments.
    CONFIGURATION = "disconnected, not counted, logged as an error"
    NOT_COUNTED = "disconnected, not counted"


class Meaning(NamedTuple):
    """What one Kind means, to everything that decides (one row of MEANING)."""

    #: What the coordinator sees.
    status: CallStatus
    #: The model answered and its answer was read (blame.py: "no model that answered has this
    #: method" looks at these).
    answered: bool
    #: What a call ending so does to the model's streaks (policy.py).
    counted: Counted
    #: The check the model's supervisor runs after such a call, unless it is disconnected.
    then: Check | None
    #: A Setup ending so is tried again (supervision.py).
    setup_retried: bool
    #: What a Setup ending so, after its retries, does to the model.
    setup_end: SetupEnd


_S, _F, _T = CallStatus.SUCCESS, CallStatus.FAILURE, CallStatus.TIMEOUT
_LOST = SetupEnd.CONNECTION_FAILED  # nothing a model host says answered, however often tried

#: Every Kind's meaning, as data (h11-style): the failure policy, the blame across models, the
#: Setup retries, the registry and the results read this and decide nothing else about a Kind.
#: Kinds a Setup never ends in (SKIPPED, LEFT, ...) say what it would do.
MEANING: dict[Kind, Meaning] = {
    # Meaning(status, answered, counted, then, setup_retried, setup_end)
    Kind.SUCCESS: Meaning(_S, True, Counted.SUCCESS, None, False, SetupEnd.READY),
    Kind.MODEL_FAILURE: Meaning(_F, True, Counted.FAILURE, None, False,
                                SetupEnd.BAD_IMPLEMENTATION),
    Kind.MISSING_METHOD: Meaning(_F, True, Counted.FAILURE, None, False, _LOST),
    Kind.NEEDS_SETUP: Meaning(_T, True, Counted.LOST_INSTANCE, Check.SETUP, False, _LOST),
    Kind.TIMEOUT: Meaning(_T, False, Counted.TIMEOUT, Check.PROBE, True, _LOST),
    Kind.UNREACHABLE: Meaning(_T, False, Counted.UNREACHABLE, Check.PROBE, True, _LOST),
    Kind.BUSY: Meaning(_T, False, Counted.BUSY, None, True, _LOST),
    Kind.NOT_SENT: Meaning(_T, False, Counted.NOTHING, None, False, _LOST),
    Kind.SKIPPED: Meaning(_T, False, Counted.NOTHING, None, False, _LOST),
    Kind.SETTING_UP: Meaning(_T, False, Counted.NOTHING, None, False, _LOST),
    Kind.LEFT: Meaning(_F, False, Counted.NOTHING, None, False, _LOST),
    Kind.UNTRUSTED: Meaning(_F, False, Counted.UNTRUSTED, None, False,
                            SetupEnd.CONNECTION_FAILED),
    Kind.REFUSED: Meaning(_F, False, Counted.NOTHING, None, False, SetupEnd.CONFIGURATION),
    Kind.COORDINATOR: Meaning(_F, False, Counted.NOTHING, None, False,
                              SetupEnd.CONFIGURATION),
    Kind.CLIENT_BUG: Meaning(_F, False, Counted.NOTHING, None, True, SetupEnd.NOT_COUNTED),
    Kind.MISSING_BASE_CLASS: Meaning(_F, False, Counted.NOTHING, None, False,
                                     SetupEnd.BASE_CLASS),
}


class Outcome(NamedTuple):
    """How one call ended (a NamedTuple: one is built per call, ~3x cheaper than a frozen
    dataclass, which sets each field through object.__setattr__)."""

    kind: Kind
    output: object = None
    latency_us: int = 0
    detail: str = ""

    @property
    def status(self) -> CallStatus:
        return MEANING[self.kind].status


# gRPC statuses that mean "did not answer in time" rather than "answered wrongly". Existing
# servers reject a second concurrent call with RESOURCE_EXHAUSTED "Server busy".
_TIMEOUT_STATUSES = {GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.RESOURCE_EXHAUSTED,
                     GrpcStatus.CANCELLED}
#: How hosts word a call refused because the model is still running another: crunch-model-runner
#: answers exactly this, ours adds what the model runs (model_runner/serial.py).
_BUSY = "Server busy"


def outcome_of_error(endpoint: ModelEndpoint, exc: BaseException, latency: int) -> Outcome:
    """How a call that ended in an exception counts: the one place transport errors map."""
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
    if isinstance(exc, OSError | EOFError | StreamTerminatedError | ProtocolError
                  | H2ProtocolError):
        return Outcome(Kind.UNREACHABLE, latency_us=latency,
                       detail=f"unreachable: {describe(exc)}")
    # Anything else is a bug of ours (it once counted as an unreachable model, logged at DEBUG,
    # and ended in a CONNECTION_FAILED report): never the model's.
    logger.error("bug: the call to %s raised %s", endpoint, type(exc).__name__,
                 exc_info=exc)
    return Outcome(Kind.CLIENT_BUG, latency_us=latency,
                   detail=f"not counted: a bug in model-runner-client ({type(exc).__name__}: "
                          f"{exc}); please report it")


def read_answer(raw: bytes, latency_us: int, decoder: ResultDecoder, *, defer: bool = False,
                check: bool = True) -> Outcome:
    """The outcome of an answer. With `defer`, the value is left for CallResult.output to
    decode, after a cheap check (`check`) or none."""
    try:
        answer = parse_call_response(raw)
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable response: {exc}")
    # Older hosts send no Status on success; their errors arrive as gRPC statuses instead.
    if answer.code and answer.code != StatusCode.SUCCESS:
        if answer.code == StatusCode.FAILED_PRECONDITION:
            return Outcome(Kind.NEEDS_SETUP, latency_us=latency_us,
                           detail=f"not answered: the host has no model instance (it restarted; "
                                  f"setting it up again): {answer.message}")
        if answer.code == StatusCode.BAD_IMPLEMENTATION and \
                names_missing_method(answer.message):
            kind = Kind.MISSING_METHOD
        else:
            kind = Kind.MODEL_FAILURE
        return Outcome(kind, latency_us=latency_us,
                       detail=f"{answer.code or 'no status'}: {answer.message}")
    try:
        if defer:
            if check and answer.variant_type is not None:
                check_value(answer.variant_type, answer.value)
            output: object = DeferredOutput(decoder, answer.variant_type, answer.value)
        else:
            output = decoder(answer.variant_type, answer.value)
    except MissingExtra as exc:
        return Outcome(Kind.COORDINATOR, latency_us=latency_us,
                       detail=f"not counted: the model answered, but this client cannot read "
                              f"the answer: {exc}")
    except VariantError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=f"unreadable result: {exc}")
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, latency_us=latency_us,
                       detail=str(exc))
    return Outcome(Kind.SUCCESS, output, latency_us)


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


def read_setup_answer(raw: bytes) -> Outcome:
    """The outcome of a Setup answer (a SetupResponse; older hosts send no Status on success)."""
    try:
        code, message = parse_setup_response(raw)
    except ValueError as exc:
        return Outcome(Kind.MODEL_FAILURE, detail=f"unreadable Setup answer: {exc}")
    if code in (StatusCode.SUCCESS, ""):
        return Outcome(Kind.SUCCESS)
    detail = f"Setup answered {code}: {message}"
    if code == StatusCode.BAD_IMPLEMENTATION and names_unimportable_base(message):
        return Outcome(Kind.MISSING_BASE_CLASS, detail=detail)
    if code in (StatusCode.BAD_IMPLEMENTATION, StatusCode.SETUP_FAILED):
        return Outcome(Kind.MODEL_FAILURE, detail=detail)
    # INVALID_ARGUMENT and the like: the instance arguments or base_classname we sent.
    return Outcome(Kind.COORDINATOR, detail=f"{detail}; check base_classname and the "
                                            "instance arguments")


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


def read_health_answer(raw: bytes) -> Outcome:
    """A health probe's answer: SUCCESS when the host serves the model service; NEEDS_SETUP
    when it answers without serving it (it restarted, or is still loading)."""
    try:
        status = HealthCheckResponse.FromString(raw).status
    except Exception as exc:  # the host's bytes
        return Outcome(Kind.MODEL_FAILURE, detail=f"unreadable health answer: {describe(exc)}")
    if status == HealthCheckResponse.SERVING:
        return Outcome(Kind.SUCCESS)
    return Outcome(Kind.NEEDS_SETUP,
                   detail=f"health answered {HealthCheckResponse.ServingStatus.Name(status)}")
