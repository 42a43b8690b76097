"""The failure policy: consecutive failures and timeouts per model, and cooling down.

A success resets both streaks. Reaching `max_consecutive_failures` failures or
`max_consecutive_timeouts` timeouts in a row disconnects the model. During a timeout streak of
length s the model skips ceil(s/2) calls, then one call is let through to test it again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Streaks"]


@dataclass
class Streaks:
    max_failures: int
    max_timeouts: int
    failures: int = 0
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

    def success(self) -> None:
        self.failures = self.timeouts = self.skips_left = self.unreachable = 0

    def failure(self) -> str | None:
        """Record a failure; returns the report code if the model must be disconnected."""
        self.failures += 1
        self.timeouts = self.skips_left = self.unreachable = 0
        return "MULTIPLE_FAILED" if self.failures >= self.max_failures else None

    def timeout(self, *, unreachable: bool = False) -> str | None:
        """Record a timeout; returns the report code if the model must be disconnected."""
        self.timeouts += 1
        self.failures = 0
        self.unreachable = self.unreachable + 1 if unreachable else 0
        self.skips_left = (self.timeouts + 1) // 2
        if self.timeouts >= self.max_timeouts:
            # Nothing ever answered: the host is gone rather than slow.
            return "CONNECTION_FAILED" if self.unreachable >= self.timeouts else "MULTIPLE_TIMEOUT"
        return None
