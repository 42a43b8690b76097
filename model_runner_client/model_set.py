"""The models the client holds: a `Slot` per model (its connection, failure streaks and state)
and the `ModelSet` of them, with the models that left. State only: no I/O, no tasks.

A slot's state is one value, written by the registry (registry.py) only:

    SETTING_UP  connecting and running Setup; not called
    READY       called on every tick
    CHECKING    still called; its supervisor is checking it in the background (a health probe
                after a timeout, or Setup again after the host lost its instance)
    GONE        discarded (left, replaced, disconnected); the registry closes its connection
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import anyio

from .connection import ModelConnection
from .models import ModelEndpoint
from .policy import Check, Streaks

__all__ = ["ModelSet", "Slot", "SlotState", "UnknownModelError"]

logger = logging.getLogger(__name__)

#: File descriptors left for everything but model connections before the client warns.
_FD_HEADROOM = 64
#: Departed models remembered, so results for them can still carry their metadata.
DEPARTED_KEPT = 10_000


class UnknownModelError(KeyError):
    """`models=` named a model this client has never held."""

    def __str__(self) -> str:
        return str(self.args[0])


class SlotState(Enum):
    """Where a model is in its life in this client (above): what the registry writes and the
    tick reads to decide whom to call."""

    SETTING_UP = "setting up"
    READY = "ready"
    CHECKING = "checking"
    GONE = "gone"


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

    async def next_check(self) -> Check | None:
        """The next check asked for, once asked; None once the slot is gone."""
        while not self.gone and self.pending is None:
            await self.wake.wait()
            self.wake = anyio.Event()
        check, self.pending = self.pending, None
        return None if self.gone else check

    def checked(self) -> None:
        """A check ended: back to READY unless another was asked for meanwhile."""
        if self.state is SlotState.CHECKING and self.pending is None:
            self.state = SlotState.READY

    def discard(self) -> None:
        """Mark the slot gone and end its supervisor; the registry closes its connection."""
        self.state = SlotState.GONE
        self.wake.set()  # the supervisor ends


class ModelSet:
    """The slots held (one per model id), the models that left, and a signal when either
    changes (`wait_changed`)."""

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}
        #: Models that left, newest last (bounded: DEPARTED_KEPT).
        self.departed: dict[str, ModelEndpoint] = {}
        #: Every model id ever held (ids only, so the memory of departed ones can be bounded
        #: without a held-then-forgotten id passing for one never held).
        self._ever_held: set[str] = set()
        #: The source has delivered its first complete list (the orchestrator's `init`).
        self.is_listed = False
        self._changed = anyio.Event()
        self._fd_warned = False

    # --- reading ---------------------------------------------------------------------------------

    @property
    def ready(self) -> list[ModelEndpoint]:
        """The models ready for calls (set up), in the order they were added."""
        return [slot.endpoint for slot in self.slots.values() if slot.callable]

    @property
    def pending(self) -> list[ModelEndpoint]:
        """Models still connecting or being set up."""
        return [slot.endpoint for slot in self.slots.values() if not slot.callable]

    @property
    def cooling(self) -> int:
        """Models skipping calls after timeouts."""
        return sum(1 for slot in self.slots.values() if slot.streaks.skips_left)

    @property
    def settled(self) -> bool:
        """Listed (or given any model), and none of them still being set up."""
        return (not self.pending
                and (self.is_listed or bool(self.slots) or bool(self.departed)))

    def get(self, model_id: str) -> ModelEndpoint | None:
        """The ready model with this id, if held."""
        slot = self.slots.get(model_id)
        return slot.endpoint if slot is not None and slot.callable else None

    def targets(self, models: Iterable[str | ModelEndpoint] | None) -> list[
        tuple[str, Slot | None]
    ]:
        """The models a call goes to: every ready one, or those named (each once; a departed
        one with None). Raises UnknownModelError for an id never held."""
        if models is None:
            return [(slot.endpoint.model_id, slot) for slot in self.slots.values()
                    if slot.callable]
        targets: list[tuple[str, Slot | None]] = []
        seen: set[str] = set()
        for model in models:
            model_id = model.model_id if isinstance(model, ModelEndpoint) else model
            if model_id in seen:
                continue
            seen.add(model_id)
            slot = self.slots.get(model_id)
            if slot is None and model_id not in self._ever_held:
                raise UnknownModelError(
                    f"models= names {model_id!r}, which this client has never held; "
                    "pick ids from client.models")
            targets.append((model_id, slot))
        return targets

    # --- changing --------------------------------------------------------------------------------

    def add(self, slot: Slot) -> None:
        self.slots[slot.endpoint.model_id] = slot
        self._ever_held.add(slot.endpoint.model_id)
        self._check_descriptors()
        self.notify()

    def discard(self, slot: Slot) -> None:
        """Mark the slot gone and stop holding it."""
        slot.discard()
        if self.slots.get(slot.endpoint.model_id) is slot:
            del self.slots[slot.endpoint.model_id]
        self.notify()

    def depart(self, endpoint: ModelEndpoint) -> None:
        """Remember a model that left (its metadata, for results naming it)."""
        self._ever_held.add(endpoint.model_id)
        self.departed.pop(endpoint.model_id, None)
        self.departed[endpoint.model_id] = endpoint
        while len(self.departed) > DEPARTED_KEPT:
            del self.departed[next(iter(self.departed))]  # oldest first
        self.notify()

    def returning(self, model_id: str) -> ModelEndpoint | None:
        """The departed deployment of a model coming back, forgotten as departed."""
        return self.departed.pop(model_id, None)

    def mark_listed(self) -> None:
        if not self.is_listed:
            self.is_listed = True
            self.notify()

    def notify(self) -> None:
        """Wake whoever waits for a change (`wait_changed`)."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _check_descriptors(self) -> None:
        """Warn once when the models (one connection each) near the open-file limit."""
        if self._fd_warned:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and len(self.slots) + _FD_HEADROOM > soft:
            self._fd_warned = True
            logger.warning(
                "%d models need as many open connections, near this process's limit of %d "
                "open files (hard limit %s); raise it with `ulimit -n` or "
                "resource.setrlimit(resource.RLIMIT_NOFILE, ...) before starting the client",
                len(self.slots), soft, "unlimited" if hard == resource.RLIM_INFINITY else hard)
