"""One tick in plain steps: `plan` (whom to call, whom to skip and why, each request framed),
the fan-out (fanout.py: every call under one deadline), `settle` (whose fault each outcome is,
the failure policy, one result per target). `ModelRunnerClient.call_request` is these three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .blame import Mistake, attribute
from .fanout import Job
from .model_set import Slot
from .models import ModelEndpoint
from .outcomes import Kind, Outcome
from .results import CallResult, CallResults
from .transports.call import frame

__all__ = ["Plan", "plan", "settle"]

#: Where a tick's request comes from: the same encoded CallRequest for every model, or one
#: built per model.
Request = bytes | Callable[[ModelEndpoint], bytes]


@dataclass(slots=True)
class Plan:
    """A tick before it runs: one entry per target, in the order asked for."""

    endpoints: list[ModelEndpoint] = field(default_factory=list)
    #: Each target's outcome if it is not called (left, setting up, cooling down), else None
    #: until `settle` fills it.
    outcomes: list[Outcome | None] = field(default_factory=list)
    #: The calls to make, and for each the target's index and slot.
    jobs: list[Job] = field(default_factory=list)
    called: list[tuple[int, Slot]] = field(default_factory=list)


def plan(targets: Sequence[tuple[str, Slot | None]], request: Request,
         departed: Callable[[str], ModelEndpoint | None]) -> Plan:
    """Decide each target's call. Every request is built first, so a bad argument raises
    (ArgumentError) before anything is sent or counted; shared arguments are framed once and
    the same bytes go to every model. A model cooling down uses up one of its skips here."""
    if isinstance(request, bytes):
        shared = frame(request)
        payloads = [None if slot is None or not slot.callable else shared for _, slot in targets]
    else:
        payloads = [None if slot is None or not slot.callable else frame(request(slot.endpoint))
                    for _, slot in targets]
    tick = Plan()
    for index, ((model_id, slot), payload) in enumerate(zip(targets, payloads, strict=True)):
        outcome: Outcome | None = None
        if slot is None:
            # Departed long ago, its metadata may be forgotten (the memory is bounded).
            tick.endpoints.append(departed(model_id) or ModelEndpoint(model_id, "", 0))
            outcome = Outcome(Kind.LEFT, detail="not called: the model has left")
        else:
            tick.endpoints.append(slot.endpoint)
            if not slot.callable:
                outcome = Outcome(Kind.SETTING_UP,
                                  detail="not called: the model is still being set up")
            elif slot.streaks.take_skip():
                outcome = Outcome(Kind.SKIPPED, detail="skipped while cooling down after "
                                  + _count(slot.streaks.timeouts, "timeout") + " in a row")
            else:
                assert payload is not None
                tick.jobs.append(Job(slot.connection, payload))
                tick.called.append((index, slot))
        tick.outcomes.append(outcome)
    return tick


def settle(tick: Plan, method: str, answers: Sequence[Outcome],
           apply_policy: Callable[[Slot, str, Outcome], None]
           ) -> tuple[CallResults[object], list[Outcome], Mistake | None]:
    """The answers of `tick.jobs` as they count (blame.py), each counted for its model by
    `apply_policy` unless the coordinator is likely at fault; returns the results, every
    target's outcome, and the coordinator's likely mistake."""
    counted, blame, mistake = attribute(method, answers)
    for (index, slot), outcome in zip(tick.called, counted, strict=True):
        tick.outcomes[index] = outcome
        if blame:
            apply_policy(slot, method, outcome)
    ended = [outcome for outcome in tick.outcomes if outcome is not None]
    results = CallResults([CallResult.make(endpoint, o.status, o.output, o.latency_us, o.detail)
                           for endpoint, o in zip(tick.endpoints, ended, strict=True)])
    return results, ended, mistake


def _count(number: int, noun: str) -> str:
    """'1 timeout', '2 timeouts'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
