"""`Registry`: the client's live model set as model sources drive it (sources.ModelRegistry),
each model's supervisor, and what the failure policy's verdicts do.

It puts together three parts, one concern each: what models are held (model_set.py), how each
is checked (supervision.py: Setup with retries, health probes), and what gets reported
(reports.py: events, one report per deployment). It decides, from each check's and each call's
`Outcome`, whether a model becomes ready, is checked, or is dropped (and reported or not).

Each slot has one supervisor task for its whole life, in the task group `run` owns: it runs the
first Setup, then each check the failure policy asks for (`Slot.request`), one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from .connection import Connector
from .events import EventKind, ModelEvent, ReportCode
from .model_set import ModelSet, Slot, SlotState
from .models import ModelEndpoint, host_problem
from .outcomes import MEANING, Outcome, SetupEnd
from .policy import Check, Counted, Streaks
from .reports import Reports
from .sources import ModelSource
from .supervision import Checks

__all__ = ["Registry"]

logger = logging.getLogger(__name__)


class Registry:
    def __init__(self, *, connector: Connector, checks: Checks, reports: Reports,
                 max_consecutive_failures: int, max_consecutive_timeouts: int) -> None:
        self.models = ModelSet()
        self.reports = reports
        self._connector = connector
        self._checks = checks
        self.max_consecutive_failures = max_consecutive_failures
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self._group: anyio.abc.TaskGroup | None = None
        #: Slots added before `run` started their supervisors.
        self._unsupervised: list[Slot] = []
        self._closed = False

    async def run(self, source: ModelSource) -> None:
        """Let `source` fill the set and supervise every model, until cancelled."""
        async with anyio.create_task_group() as group:
            self._group = group
            for slot in self._unsupervised:
                group.start_soon(self._supervise, slot)
            self._unsupervised.clear()
            try:
                await source.run(self)
            except Exception:
                logger.exception("the model source %r failed; the client keeps the models it "
                                  "has", source)
            await anyio.sleep_forever()

    def close(self) -> None:
        """Discard every model (their supervisors end), take no more, close the reports and wake
        whoever waits on the model set so it sees the end."""
        self._closed = True
        for slot in list(self.models.slots.values()):
            self._discard(slot)
        self.reports.close()
        self.models.notify()

    # --- what sources drive (sources.ModelRegistry) ----------------------------------------------

    def upsert(self, endpoint: ModelEndpoint) -> None:
        """Add a model, or replace it when its address or deployment changed."""
        if self._closed:
            return
        if self.reports.was_reported(endpoint):
            logger.info("not adding %s again: this deployment was reported as failed", endpoint)
            return
        models = self.models
        current = models.slots.get(endpoint.model_id)
        problem = host_problem(endpoint.ip)
        if problem is not None:
            # Never connectable: report it now rather than leave it pending forever.
            if current is not None:
                self._drop(current, f"replaced by a deployment at an impossible address: "
                                    f"{problem}")
            models.depart(endpoint)
            self.reports.report(endpoint, ReportCode.CONNECTION_FAILED,
                                f"{problem}; the orchestrator gave an address no connection "
                                "can reach")
            return
        if current is not None:
            if (current.endpoint.deployment_id == endpoint.deployment_id
                    and current.endpoint.address == endpoint.address):
                current.endpoint = endpoint  # fresher metadata, same deployment
                return
            previous = current.endpoint if current.callable else current.previous
            self._discard(current)
        else:
            previous = models.returning(endpoint.model_id)
            if previous is not None and previous.deployment_id == endpoint.deployment_id:
                previous = None  # the same deployment coming back is a join, not a redeploy
        slot = Slot(endpoint, self._connector.connect(endpoint),
                    Streaks(self.max_consecutive_failures, self.max_consecutive_timeouts),
                    previous=previous)
        models.add(slot)
        if self._group is None:
            self._unsupervised.append(slot)
        else:
            self._group.start_soon(self._supervise, slot)

    def remove(self, model_id: str, reason: str, *, deployment_id: str | None = None) -> None:
        """Remove a model (if `deployment_id` is given, only if it is still that deployment)."""
        slot = self.models.slots.get(model_id)
        if slot is None:
            return
        if deployment_id is not None and slot.endpoint.deployment_id != deployment_id:
            return  # about an older deployment than the one held
        self._drop(slot, reason)

    def model_ids(self) -> set[str]:
        """Every model held, ready or still being set up."""
        return set(self.models.slots)

    def deployment_of(self, model_id: str) -> str | None:
        slot = self.models.slots.get(model_id)
        return slot.endpoint.deployment_id if slot is not None else None

    def listed(self) -> None:
        """The source has delivered its complete list of models."""
        self.models.mark_listed()

    # --- the failure policy's effects ------------------------------------------------------------

    def apply_policy(self, slot: Slot, method: str, outcome: Outcome) -> None:
        """Count a call's outcome for its model (as the outcome table says): a check, or a drop
        with its report."""
        if slot.gone:
            return  # left during the call: nothing to count
        meaning = MEANING[outcome.kind]
        streaks = slot.streaks
        verdict = streaks.count(method, meaning.counted)
        if verdict is None:
            if meaning.then is not None:
                slot.request(meaning.then)
            return
        if verdict == ReportCode.MULTIPLE_FAILED:
            reason = (f"{streaks.failures[method]} failures of {method} in a row; "
                      f"last: {outcome.detail}")
        elif meaning.counted is Counted.UNTRUSTED:
            reason = outcome.detail
        else:
            plural = "" if streaks.timeouts == 1 else "s"
            reason = f"{streaks.timeouts} timeout{plural} in a row; last: {outcome.detail}"
        self._drop(slot, reason, verdict)

    # --- supervision -----------------------------------------------------------------------------

    async def _supervise(self, slot: Slot) -> None:
        """The slot's one supervisor: the first Setup, then each check the policy asks for,
        one at a time, until the slot is gone."""
        await self._run_check(slot, self._checks.set_up)
        while (check := await slot.next_check()) is not None:
            await self._run_check(slot, self._checks.set_up if check is Check.SETUP
                                  else self._checks.probe)
            slot.checked()

    async def _run_check(self, slot: Slot,
                         check: Callable[[Slot], Awaitable[Outcome | None]]) -> None:
        """Run a check and act on its outcome. One that raises is a bug of ours: logged with
        its traceback, never the model's fault, and the supervisor goes on (it once left the
        model CHECKING for good)."""
        try:
            outcome = await check(slot)
            if outcome is not None and not slot.gone:
                self._settle(slot, outcome)
        except Exception:
            logger.exception("bug: %s of %s raised; the model is kept and checked again "
                             "after its next timeout", check.__name__, slot.endpoint)

    def _settle(self, slot: Slot, outcome: Outcome) -> None:
        """What a Setup's (or a probe's) outcome does to the model, as the outcome table says."""
        end, detail, endpoint = MEANING[outcome.kind].setup_end, outcome.detail, slot.endpoint
        if end is SetupEnd.READY:
            self.reports.base_class_found()
            if slot.state is SlotState.SETTING_UP:
                self._ready(slot)
        elif end is SetupEnd.BASE_CLASS:
            if self.reports.base_class_imported:  # other hosts can: the submission's fault
                self._drop(slot, detail, ReportCode.BAD_IMPLEMENTATION)
            else:  # none can yet: likely base_classname; reported if one can later
                self.reports.hold_back(endpoint, detail)
                self._drop(slot, f"not counted: no host could import the base class: {detail}")
        elif end is SetupEnd.BAD_IMPLEMENTATION:
            self._drop(slot, detail, ReportCode.BAD_IMPLEMENTATION)
        elif end is SetupEnd.CONNECTION_FAILED:
            self._drop(slot, detail, ReportCode.CONNECTION_FAILED)
        elif end is SetupEnd.CONFIGURATION:
            logger.error("Setup of %s failed: %s", endpoint, detail)
            self._drop(slot, f"not counted: {detail}")
        else:  # NOT_COUNTED: a bug of ours, already logged with its traceback
            self._drop(slot, detail)

    def _ready(self, slot: Slot) -> None:
        slot.state = SlotState.READY
        self.models.notify()
        previous, slot.previous = slot.previous, None
        if previous is not None and previous.deployment_id != slot.endpoint.deployment_id:
            self.reports.event(ModelEvent(EventKind.REDEPLOYED, slot.endpoint,
                                          previous=previous))
        else:
            self.reports.event(ModelEvent(EventKind.JOINED, slot.endpoint))

    def _discard(self, slot: Slot) -> None:
        """Stop holding a model and close its connection. Gone first: closing ends a pending
        Setup or probe at once, and it must then see GONE (no cancel scope reaches into the
        transport, whose stream resets swallow them)."""
        self.models.discard(slot)
        slot.connection.close()

    def _drop(self, slot: Slot, reason: str, report_code: ReportCode | None = None) -> None:
        if slot.gone:
            return
        was_ready = slot.callable
        self._discard(slot)
        self.models.depart(slot.endpoint)
        if report_code is not None:
            self.reports.report(slot.endpoint, report_code, reason)
        if was_ready:
            self.reports.event(ModelEvent(EventKind.LEFT, slot.endpoint, reason=reason))
        else:
            logger.warning("model %s dropped before it was ready: %s", slot.endpoint, reason)
