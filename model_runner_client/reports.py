"""What the client tells the world about its models: JOINED / LEFT / REDEPLOYED events and
failure reports, each failure reported once per deployment.

Notices queue in `notices` (unbounded: producing one never waits), read in order by the
client's one dispatching task, which runs the callbacks and sends reports to the orchestrator.
Events also reach the `events()` iterators at once.

A host that cannot import the Crunch's base class says little on its own: when no host has
imported it yet, the coordinator's base_classname is the likely mistake (it once got every
model reported BAD_IMPLEMENTATION), so those models are held back here, unreported, and
reported only once another host imports it.
"""

from __future__ import annotations

import logging
import math

import anyio

from .events import EventHub, FailureReport, ModelEvent, ReportCode
from .model_set import DEPARTED_KEPT
from .models import ModelEndpoint

__all__ = ["Notice", "Reports"]

logger = logging.getLogger(__name__)

Notice = ModelEvent | FailureReport


class Reports:
    def __init__(self, events: EventHub) -> None:
        self._events = events
        self._send, self.notices = anyio.create_memory_object_stream[Notice](math.inf)
        self._reported: set[tuple[str, str]] = set()
        #: Whether any host has imported the base class (then one that cannot, can't by the
        #: submission's fault).
        self.base_class_imported = False
        self._held_back: dict[tuple[str, str], tuple[ModelEndpoint, str]] = {}

    def event(self, event: ModelEvent) -> None:
        self._events.publish(event)  # iterators get it at once
        self._queue(event)

    def was_reported(self, endpoint: ModelEndpoint) -> bool:
        return (endpoint.model_id, endpoint.deployment_id) in self._reported

    def report(self, endpoint: ModelEndpoint, code: ReportCode, reason: str) -> None:
        """Report a deployment's failure (once: the orchestrator stops the model for good)."""
        key = (endpoint.model_id, endpoint.deployment_id)
        if key in self._reported:
            return
        self._reported.add(key)
        logger.warning("reporting %s as %s: %s", endpoint, code, reason)
        self._queue(FailureReport(endpoint, code, reason))

    def hold_back(self, endpoint: ModelEndpoint, detail: str) -> None:
        """A host cannot import the base class and none has yet: hold its report back until
        one does (`base_class_found`)."""
        if not self._held_back:
            logger.error("no model host could import the base class so far: %s. Check "
                         "base_classname (the Crunch package's dotted path, e.g. "
                         "'starter_challenge.tracker.TrackerBase'); nothing is reported",
                         detail)
        if len(self._held_back) < DEPARTED_KEPT:
            self._held_back[(endpoint.model_id, endpoint.deployment_id)] = (endpoint, detail)

    def base_class_found(self) -> None:
        """A host imported the base class: those that could not are the submissions' fault."""
        if self.base_class_imported:
            return
        self.base_class_imported = True
        held, self._held_back = self._held_back, {}
        for endpoint, detail in held.values():
            self.report(endpoint, ReportCode.BAD_IMPLEMENTATION,
                        f"{detail} (other model hosts import it)")

    def close(self) -> None:
        self._send.close()

    def _queue(self, notice: Notice) -> None:
        try:
            self._send.send_nowait(notice)
        except anyio.ClosedResourceError:
            pass  # the client closed: nothing is delivered any more
