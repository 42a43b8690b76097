"""Model lifecycle events: joined, left, redeployed; as callbacks or async iterators."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .models import ModelEndpoint

__all__ = ["EventKind", "FailureReport", "ModelEvent", "ReportCode"]

logger = logging.getLogger(__name__)


class EventKind(StrEnum):
    #: Set up and ready for calls.
    JOINED = "JOINED"
    #: Removed: stopped by the orchestrator, disconnected by the failure policy, or failed Setup.
    LEFT = "LEFT"
    #: A new deployment of a known model_id is ready (reset its metrics, re-send history).
    REDEPLOYED = "REDEPLOYED"


@dataclass(frozen=True)
class ModelEvent:
    kind: EventKind
    model: ModelEndpoint
    #: For REDEPLOYED, the deployment it replaced.
    previous: ModelEndpoint | None = None
    #: Why, for LEFT.
    reason: str = ""


class ReportCode(StrEnum):
    """Why a model is reported to the orchestrator (which stops it, and may quarantine it): the
    orchestrator protocol's codes, spelled as it reads them."""

    #: No usable class, or its constructor raised (Setup).
    BAD_IMPLEMENTATION = "BAD_IMPLEMENTATION"
    #: Nothing ever answered, or the host failed the security mode's identity check.
    CONNECTION_FAILED = "CONNECTION_FAILED"
    #: max_consecutive_failures failures of one method in a row.
    MULTIPLE_FAILED = "MULTIPLE_FAILED"
    #: max_consecutive_timeouts timeouts in a row.
    MULTIPLE_TIMEOUT = "MULTIPLE_TIMEOUT"


@dataclass(frozen=True)
class FailureReport:
    """A model disconnected for its own fault; the orchestrator link sends it on."""

    model: ModelEndpoint
    #: A ReportCode (a str: the orchestrator's failure_code).
    code: str
    reason: str


EventCallback = Callable[[ModelEvent], Awaitable[None] | None]


class EventHub:
    """Fans events out to subscribers (each with its own unbounded buffer) and callbacks.

    `publish` hands an event to every subscriber at once; `call_back` runs the callbacks. The
    client calls both for each event from one task, so every consumer sees events in order.
    """

    def __init__(self) -> None:
        self._streams: list[MemoryObjectSendStream[ModelEvent]] = []
        self._callbacks: list[EventCallback] = []

    def add_callback(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def subscribe(self) -> MemoryObjectReceiveStream[ModelEvent]:
        send, receive = anyio.create_memory_object_stream[ModelEvent](math.inf)
        self._streams.append(send)
        return receive

    def publish(self, event: ModelEvent) -> None:
        logger.info("%s %s%s", event.kind.value, event.model,
                    f": {event.reason}" if event.reason else "")
        for stream in list(self._streams):
            try:
                stream.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._streams.remove(stream)  # the subscriber went away

    async def call_back(self, event: ModelEvent) -> None:
        for callback in list(self._callbacks):
            try:
                outcome = callback(event)
                if outcome is not None:
                    await outcome
            except Exception:
                logger.exception("event callback %r raised on %s", callback, event)

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        self._streams.clear()


async def iterate(receive: MemoryObjectReceiveStream[ModelEvent]) -> AsyncIterator[ModelEvent]:
    async with receive:
        async for event in receive:
            yield event
