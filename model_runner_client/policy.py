"""The failure policy: consecutive failures and timeouts per model, and cooling down.

Failures are counted per method: a model whose `predict` always raises is disconnected even
though its `tick` keeps succeeding (a success of `tick` says nothing about `predict`). Timeouts
are counted per model: any answer shows the model is responsive, so any success resets them.
Reaching `max_consecutive_failures` failures of one method, or `max_consecutive_timeouts`
timeouts, in a row disconnects the model. During a timeout streak of length s the model skips
ceil(s/2) calls, then one call is let through to test it again: a slow model is not made to
hold every tick to its deadline.

A busy answer (the host says at once that the model is still running an earlier call, whose
caller gave up) counts as a timeout but sets no skips: it cost the tick nothing, and the next
call tells again at no cost whether the model is free. A model stuck for good is therefore
disconnected on its `max_consecutive_timeouts`-th call (the first timeout, one skipped call,
then a busy answer on each tick: `max_consecutive_timeouts` + 1 ticks in all, 101 with
crunch-node's default of 100), while a model that was slow once answers again as soon as its
call returns, which resets the streak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .events import ReportCode

__all__ = ["Check", "Counted", "Streaks"]


class Counted(Enum):
    """What one call's outcome does to its model's streaks (the outcome table in outcomes.py
    gives each Kind one of these)."""

    SUCCESS = "resets the streaks: the model answered"
    FAILURE = "one more failure of the method called"
    TIMEOUT = "one more timeout: calls are skipped while cooling down"
    #: A timeout in which nothing answered: a streak of only these is CONNECTION_FAILED.
    UNREACHABLE = "one more timeout in which nothing answered"
    #: It cost the tick nothing: no cooling down (see above).
    BUSY = "one more timeout, without cooling down"
    #: The host restarted and lost the instance (a host that keeps restarting ends reported
    #: MULTIPLE_TIMEOUT).
    LOST_INSTANCE = "one more timeout: the host has no instance"
    #: The host is not the cruncher's: never called again.
    UNTRUSTED = "disconnects the model at once, reported CONNECTION_FAILED"
    #: Our credentials, the coordinator's call, a bug of ours, our bound on calls in flight,
    #: or no call at all: never the model's doing.
    NOTHING = "not counted"


class Check(Enum):
    """What the failure policy asks a slot's supervisor to do after a call (the outcome table
    says after which)."""

    #: After a timeout: is the host still there and holding the model?
    PROBE = "probe"
    #: The host lost its instance (FAILED_PRECONDITION): Setup again.
    SETUP = "setup"


@dataclass
class Streaks:
    max_failures: int
    max_timeouts: int
    #: Consecutive failures per method name.
    failures: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    #: Calls still to skip before the next one is let through.
    skips_left: int = 0
    #: How many of the current timeouts were connection failures (nothing answered at all).
    unreachable: int = 0

    def take_skip(self) -> bool:
        """True if this call is skipped (cooling down); it then counts as nothing."""
        if self.skips_left > 0:
            self.skips_left -= 1
            return True
        return False

    def forgive(self) -> None:
        """Forget every streak, as if the model had just joined."""
        self.failures.clear()
        self.timeouts = self.skips_left = self.unreachable = 0

    def count(self, method: str, counted: Counted) -> ReportCode | None:
        """Record a call of `method` that ended as `counted`; returns the report code if the
        model must be disconnected."""
        if counted is Counted.SUCCESS:
            self.success(method)
            return None
        if counted is Counted.FAILURE:
            return self.failure(method)
        if counted is Counted.UNTRUSTED:
            return ReportCode.CONNECTION_FAILED
        if counted is Counted.NOTHING:
            return None
        return self.timeout(unreachable=counted is Counted.UNREACHABLE,
                            busy=counted is Counted.BUSY)

    def success(self, method: str) -> None:
        self.failures.pop(method, None)
        self.timeouts = self.skips_left = self.unreachable = 0

    def failure(self, method: str) -> ReportCode | None:
        """Record a failure; returns the report code if the model must be disconnected."""
        count = self.failures[method] = self.failures.get(method, 0) + 1
        # The model answered: it is responsive, whatever it answered.
        self.timeouts = self.skips_left = self.unreachable = 0
        return ReportCode.MULTIPLE_FAILED if count >= self.max_failures else None

    def timeout(self, *, unreachable: bool = False, busy: bool = False) -> ReportCode | None:
        """Record a timeout (`busy`: one the host answered at once); returns the report code if
        the model must be disconnected."""
        self.timeouts += 1
        self.unreachable = self.unreachable + 1 if unreachable else 0
        self.skips_left = 0 if busy else (self.timeouts + 1) // 2
        if self.timeouts >= self.max_timeouts:
            # Nothing ever answered: the host is gone rather than slow.
            return (ReportCode.CONNECTION_FAILED if self.unreachable >= self.timeouts
                    else ReportCode.MULTIPLE_TIMEOUT)
        return None
