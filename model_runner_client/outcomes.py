"""How a call ended: an `Outcome` whose `Kind` says why, and the table of what each Kind means
(MEANING). Answers become Outcomes in answers.py, a call's errors at the transports' boundary
(transports/errors.py), calls not made in tick.py and fanout.py; the failure policy, the blame,
Setup, the registry and the results read the table, the metrics the Kind.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from .policy import Check, Counted
from .results import CallStatus

__all__ = ["MEANING", "Kind", "Meaning", "Outcome", "SetupEnd"]


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
