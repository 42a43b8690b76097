"""One slot per model the client holds: its connection, its failure streaks, and its state.

A slot's state is one value, written by the client's registry code only:

    SETTING_UP  connecting and running Setup; not called
    READY       called on every tick
    CHECKING    still called; its supervisor is checking it in the background (a health probe
                after a timeout, or Setup again after the host lost its instance)
    GONE        discarded (left, replaced, disconnected); its connection is closed

Each slot has one supervisor task for its whole life (the client owns it): it runs the first
Setup, then waits for the failure policy to ask for a check (`request`), one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import anyio

from .connection import ModelConnection
from .models import ModelEndpoint
from .policy import Streaks

__all__ = ["Check", "Slot", "SlotState"]


class SlotState(Enum):
    SETTING_UP = "setting up"
    READY = "ready"
    CHECKING = "checking"
    GONE = "gone"


class Check(Enum):
    """What the failure policy asks a slot's supervisor to do."""

    #: After a timeout: is the host still there and holding the model?
    PROBE = "probe"
    #: The host lost its instance (FAILED_PRECONDITION): Setup again.
    SETUP = "setup"


@dataclass(eq=False)
class Slot:
    endpoint: ModelEndpoint
    connection: ModelConnection
    streaks: Streaks
    #: The deployment this one replaces, for the REDEPLOYED event.
    previous: ModelEndpoint | None = None
    state: SlotState = SlotState.SETTING_UP
    #: The check asked for and not yet started (SETUP wins over PROBE).
    pending: Check | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def callable(self) -> bool:
        return self.state is SlotState.READY or self.state is SlotState.CHECKING

    @property
    def gone(self) -> bool:
        return self.state is SlotState.GONE

    def request(self, check: Check) -> None:
        """Ask the supervisor for a check (no-op while one of at least that weight waits)."""
        if self.gone or self.state is SlotState.SETTING_UP:
            return
        if self.pending is None or check is Check.SETUP:
            self.pending = check
            self.state = SlotState.CHECKING
            self.wake.set()

    def discard(self) -> None:
        self.state = SlotState.GONE
        # Closing the connection ends a pending Setup or probe at once (they then see GONE);
        # no cancel scope reaches into the transport, whose stream resets swallow them.
        self.connection.close()
        self.wake.set()  # the supervisor ends
