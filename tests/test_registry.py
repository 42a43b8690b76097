"""The registry as a state machine (hypothesis): models join, leave and are redeployed, hosts
set up well or badly, and calls end in every Kind, in any order. After every step: a failure is
reported once per deployment and only with a cause of its own, an honest model never; the
states agree (held, ready, departed, connections open or closed, events in order).

The network is the one thing replaced here: each connection is scripted (its Setup and health
answers are Outcomes, as connection.py returns them); the registry, its model set, supervisors,
checks and reports are the real ones, on a real event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from model_runner_client.events import EventHub, EventKind, FailureReport, ModelEvent
from model_runner_client.model_set import SlotState
from model_runner_client.models import ModelEndpoint
from model_runner_client.outcomes import Kind, Outcome
from model_runner_client.registry import Registry
from model_runner_client.reports import Reports
from model_runner_client.sources import StaticModels
from model_runner_client.supervision import Checks

MODELS = ["m0", "m1", "m2"]
#: How a deployment's host answers Setup.
SETUP_ANSWERS = {
    "honest": Outcome(Kind.SUCCESS),
    "bad implementation": Outcome(Kind.MODEL_FAILURE, detail="Setup answered BAD_IMPLEMENTATION"),
    "missing base class": Outcome(Kind.MISSING_BASE_CLASS,
                                  detail="Setup answered BAD_IMPLEMENTATION: base class"),
    "unreachable": Outcome(Kind.UNREACHABLE, detail="unreachable: refused"),
    "untrusted": Outcome(Kind.UNTRUSTED, detail="the host failed the identity check"),
}
#: What a call sent to a model can end with (MISSING_BASE_CLASS is Setup's alone; the client
#: makes up the others for models it does not call).
CALL_KINDS = [kind for kind in Kind if kind not in (
    Kind.MISSING_BASE_CLASS, Kind.SKIPPED, Kind.SETTING_UP, Kind.LEFT)]
FAILURES = {Kind.MODEL_FAILURE, Kind.MISSING_METHOD}
NOT_ANSWERED = {Kind.TIMEOUT, Kind.BUSY, Kind.UNREACHABLE, Kind.NEEDS_SETUP}


class ScriptedConnection:
    def __init__(self, endpoint: ModelEndpoint, behaviour: str) -> None:
        self.endpoint = endpoint
        self.behaviour = behaviour
        self.closed = False

    async def setup(self, payload: bytes, timeout: float) -> Outcome:
        await asyncio.sleep(0)
        return SETUP_ANSWERS[self.behaviour]

    async def health(self, service: str, timeout: float) -> Outcome:
        await asyncio.sleep(0)
        return Outcome(Kind.SUCCESS if self.behaviour == "honest" else Kind.UNREACHABLE)

    def reconnect(self) -> None:
        assert not self.closed, "reconnect after close"

    def close(self) -> None:
        self.closed = True


class ScriptedConnector:
    """Stands for connection.Connector: one scripted connection per model held."""

    def __init__(self, behaviours: dict[tuple[str, str], str]) -> None:
        self.behaviours = behaviours
        self.made: list[ScriptedConnection] = []

    def connect(self, endpoint: ModelEndpoint) -> ScriptedConnection:
        connection = ScriptedConnection(
            endpoint, self.behaviours[(endpoint.model_id, endpoint.deployment_id)])
        self.made.append(connection)
        return connection


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.behaviours: dict[tuple[str, str], str] = {}
        self.connector = ScriptedConnector(self.behaviours)
        self.reports_part = Reports(EventHub())
        self.registry = Registry(
            connector=self.connector,  # type: ignore[arg-type]
            checks=Checks(setup_payload=b"", setup_timeout=1.0, connect_attempts=1,
                          probe_timeout=1.0),
            reports=self.reports_part, max_consecutive_failures=3,
            max_consecutive_timeouts=3)
        self.runner = self.loop.create_task(self.registry.run(StaticModels([])))
        self.deployments = itertools.count()
        #: The deployment each model was last given (what the orchestrator runs).
        self.current: dict[str, str] = {}
        #: What each deployment was given: kinds of call outcomes, per method for failures.
        self.given: dict[tuple[str, str], list[tuple[str, Kind]]] = {}
        self.reports: list[FailureReport] = []
        self.events: list[ModelEvent] = []
        self.base_imported = False
        self.settle()

    def act(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Call the registry from a task of the loop, as sources and ticks do; then settle."""
        async def step() -> None:
            fn(*args, **kwargs)
        self.loop.run_until_complete(step())
        self.settle()

    def settle(self) -> None:
        """Run the loop until every supervisor waits (scripted checks end in a few steps)."""
        for _ in range(60):
            self.loop.run_until_complete(asyncio.sleep(0))
        while True:
            try:
                notice = self.reports_part.notices.receive_nowait()
            except Exception:
                break
            if isinstance(notice, FailureReport):
                self.reports.append(notice)
            else:
                self.events.append(notice)
        self.base_imported = self.base_imported or any(
            self.behaviours[(e.model.model_id, e.model.deployment_id)] == "honest"
            for e in self.events if e.kind is not EventKind.LEFT)

    def teardown(self) -> None:
        self.registry.close()
        self.runner.cancel()
        self.loop.run_until_complete(asyncio.gather(self.runner, return_exceptions=True))
        self.loop.close()

    # --- what the orchestrator does ------------------------------------------------------------

    @rule(model=st.sampled_from(MODELS),
          behaviour=st.sampled_from(["honest", "honest", *sorted(SETUP_ANSWERS)]),
          redeploy=st.booleans(), port=st.sampled_from([1, 2]))
    def join(self, model: str, behaviour: str, redeploy: bool, port: int) -> None:
        if redeploy or model not in self.current:
            deployment = f"d{next(self.deployments)}"
            self.behaviours[(model, deployment)] = behaviour
            self.given[(model, deployment)] = []
            self.current[model] = deployment
        deployment = self.current[model]
        # The same deployment may come again, at the same place or (rarely) another port.
        self.act(self.registry.upsert, ModelEndpoint(model, "10.0.0.1", port, deployment))

    @rule(model=st.sampled_from(MODELS), stale=st.booleans())
    def leave(self, model: str, stale: bool) -> None:
        deployment = "older" if stale else self.current.get(model)
        self.act(self.registry.remove, model, "stopped by the orchestrator",
                 deployment_id=deployment)

    # --- what a tick does ----------------------------------------------------------------------

    @rule(model=st.sampled_from(MODELS), kind=st.sampled_from(CALL_KINDS),
          method=st.sampled_from(["tick", "predict"]), times=st.integers(1, 4))
    def answer(self, model: str, kind: Kind, method: str, times: int) -> None:
        """`times` ticks in a row in which the model's call ends in `kind`."""
        for _ in range(times):
            slot = self.registry.models.slots.get(model)
            if slot is None or not slot.callable:
                return  # not called
            self.given[(model, slot.endpoint.deployment_id)].append((method, kind))
            self.act(self.registry.apply_policy, slot, method,
                     Outcome(kind, detail=kind.value))

    # --- what must hold after every step -------------------------------------------------------

    @invariant()
    def reported_once_per_deployment(self) -> None:
        keys = [(r.model.model_id, r.model.deployment_id) for r in self.reports]
        assert len(keys) == len(set(keys)), keys

    @invariant()
    def every_report_has_a_cause_of_its_own(self) -> None:
        for report in self.reports:
            key = (report.model.model_id, report.model.deployment_id)
            behaviour, given = self.behaviours[key], self.given[key]
            if report.code == "BAD_IMPLEMENTATION":
                assert behaviour in ("bad implementation", "missing base class"), report
            elif report.code == "CONNECTION_FAILED":
                assert behaviour in ("unreachable", "untrusted") or any(
                    kind in (Kind.UNTRUSTED, Kind.UNREACHABLE) for _, kind in given), report
            elif report.code == "MULTIPLE_FAILED":
                assert any(sum(1 for m, k in given if m == method and k in FAILURES) >= 3
                           for method in ("tick", "predict")), report
            else:
                assert report.code == "MULTIPLE_TIMEOUT", report
                assert sum(1 for _, k in given if k in NOT_ANSWERED) >= 3, report

    @invariant()
    def a_bad_setup_is_reported_and_a_good_one_never_for_it(self) -> None:
        reported = {(r.model.model_id, r.model.deployment_id): r.code for r in self.reports}
        for key, behaviour in self.behaviours.items():
            if behaviour in ("bad implementation", "untrusted", "unreachable"):
                assert key in reported, (key, behaviour)
            if behaviour == "missing base class":
                # Held back until some host imports the base class, then reported.
                assert (key in reported) == self.base_imported, (key, self.base_imported)
            if behaviour == "honest" and not any(
                    kind in FAILURES | NOT_ANSWERED | {Kind.UNTRUSTED}
                    for _, kind in self.given[key]):
                assert key not in reported, (key, reported[key])

    @invariant()
    def states_agree(self) -> None:
        models = self.registry.models
        reported = {(r.model.model_id, r.model.deployment_id) for r in self.reports}
        for model_id, slot in models.slots.items():
            assert slot.endpoint.model_id == model_id
            # Scripted checks end at once: nothing is left setting up or checking.
            assert slot.state is SlotState.READY, slot.state
            assert self.behaviours[(model_id, slot.endpoint.deployment_id)] == "honest"
            assert (model_id, slot.endpoint.deployment_id) not in reported
            assert not slot.connection.closed
        assert not set(models.slots) & set(models.departed)
        assert [e.model_id for e in models.ready] == list(models.slots)
        assert models.pending == []
        open_connections = [c for c in self.connector.made if not c.closed]
        assert sorted(id(c) for c in open_connections) == sorted(
            id(slot.connection) for slot in models.slots.values())

    @invariant()
    def events_in_order(self) -> None:
        """LEFT only for a model in, JOINED only for one out; REDEPLOYED names the deployment
        it replaced; the models in are the models held."""
        inside: dict[str, str] = {}
        for event in self.events:
            model_id = event.model.model_id
            if event.kind is EventKind.LEFT:
                assert inside.pop(model_id) == event.model.deployment_id, event
            elif event.kind is EventKind.REDEPLOYED:
                assert event.previous is not None
                assert event.previous.deployment_id != event.model.deployment_id
                inside[model_id] = event.model.deployment_id
            else:
                assert model_id not in inside or inside[model_id] == event.model.deployment_id, \
                    event
                inside[model_id] = event.model.deployment_id
        held = {m: s.endpoint.deployment_id for m, s in self.registry.models.slots.items()}
        # A model replaced while in is out without a LEFT until its successor is ready.
        assert all(inside.get(m) == d for m, d in held.items()), (inside, held)


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
