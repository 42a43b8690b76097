"""Whose fault each outcome of a call is, seen across all the models called at once.

One model failing says something about that model; every model failing the same way says
something about the caller. A method name no model that answered has is a typo in the
coordinator's call (it once got every model reported MULTIPLE_FAILED after three ticks, and the
orchestrator stops, and may quarantine, reported models); every model unreachable at once is the
coordinator's network. Those outcomes are not counted against any model: their `detail` says so,
and the client logs the likely mistake once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .outcomes import MEANING, Kind, Outcome

__all__ = ["Mistake", "attribute"]


@dataclass(frozen=True)
class Mistake:
    """What the coordinator likely did wrong: `key` identifies it for logging it once."""

    key: str
    message: str


def attribute(method: str, outcomes: Sequence[Outcome]) -> tuple[list[Outcome], bool,
                                                                  Mistake | None]:
    """The outcomes as they count; whether the policy may count them at all; and the
    coordinator's likely mistake, if the outcomes point at one."""
    result = list(outcomes)
    if len(result) >= 2 and all(o.kind is Kind.UNREACHABLE for o in result):
        return result, False, Mistake(
            "unreachable", f"all {len(result)} models were unreachable in this call: the "
                           "coordinator's network is likely down; not counting it against the "
                           "models")
    answered = [o for o in result if MEANING[o.kind].answered]
    if answered and all(o.kind is Kind.MISSING_METHOD for o in answered):
        detail = (f"not counted: no model that answered has a method {method!r}; check the "
                  "method name in the coordinator's call")
        result = [o._replace(kind=Kind.COORDINATOR, detail=f"{detail} ({o.detail})")
                  if o.kind is Kind.MISSING_METHOD else o for o in result]
        return result, True, Mistake(
            f"method:{method}", f"none of the {len(answered)} models that answered has a "
                                f"method {method!r}: likely a typo in the coordinator's call "
                                "(nothing is counted against the models)")
    for outcome in result:
        if outcome.kind is Kind.COORDINATOR:
            return result, True, Mistake(f"decode:{method}", outcome.detail)
    return result, True, None
