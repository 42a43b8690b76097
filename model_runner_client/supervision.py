"""How each model is checked: Setup with retries, and the health probe after a timeout. Each
check ends as one `Outcome` (outcomes.py); what follows from it is the registry's decision.

At most MAX_CONCURRENT_SETUPS Setups (connect + Setup) run at once: 10,000 joining entries at an
address that refuses connections, all set up at once, held the loop 5-21 s and ticks with it.
"""

from __future__ import annotations

import logging
import random

import anyio

from model_runner.wire import SERVICE_NAME

from .model_set import Slot
from .outcomes import MEANING, Kind, Outcome

__all__ = ["MAX_CONCURRENT_SETUPS", "Checks"]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SETUPS = 64


class Checks:
    def __init__(self, *, setup_payload: bytes, setup_timeout: float, connect_attempts: int,
                 probe_timeout: float) -> None:
        self._setup_payload = setup_payload
        self.setup_timeout = setup_timeout
        self.connect_attempts = connect_attempts
        self.probe_timeout = probe_timeout
        self.setups = anyio.Semaphore(MAX_CONCURRENT_SETUPS)

    async def set_up(self, slot: Slot) -> Outcome | None:
        """Setup, tried again with backoff (capped, with jitter) while nothing answers, up to
        connect_attempts times. None if the slot is discarded meanwhile."""
        outcome = Outcome(Kind.UNREACHABLE)
        for attempt in range(1, self.connect_attempts + 1):
            if attempt > 1:
                delay = min(8.0, 0.25 * 2 ** (attempt - 2)) * random.uniform(0.5, 1.0)
                logger.info("Setup of %s failed (%s); retrying in %.1fs", slot.endpoint,
                            outcome.detail, delay)
                await anyio.sleep(delay)
                slot.connection.reconnect()
            async with self.setups:
                if slot.gone:
                    return None
                outcome = await slot.connection.setup(self._setup_payload, self.setup_timeout)
            if slot.gone:
                return None  # discarded meanwhile: its connection was closed under it
            if not MEANING[outcome.kind].setup_retried:
                return outcome
        return outcome._replace(detail=f"could not set up after {self.connect_attempts} "
                                       f"attempts: {outcome.detail}")

    async def probe(self, slot: Slot) -> Outcome | None:
        """After a timeout: is the host still there and still holding the model? SUCCESS if
        so; otherwise the outcome of setting it up again (a no-op if the model exists)."""
        health = await slot.connection.health(SERVICE_NAME, self.probe_timeout)
        if slot.gone:
            return None
        if health.kind is Kind.SUCCESS:
            return health
        if health.kind is not Kind.NEEDS_SETUP:  # no usable answer: ask a fresh connection
            logger.info("health probe of %s failed (%s); reconnecting", slot.endpoint,
                        health.detail)
            slot.connection.reconnect()
        return await self.set_up(slot)
