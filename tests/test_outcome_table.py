"""The outcome table (outcomes.MEANING) walked Kind by Kind through what decides: a result's
status, the failure policy after a call and the check it asks for, Setup's retries, and what a
Setup ending so does to the model. The expectations are what the five places that used to
decide said (issue 23: `_STATUS_OF`, blame's `_ANSWERED`, the registry's two if-chains and
supervision's `_RETRIED`), so the table changed none of it.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from model_runner_client.events import EventHub, ReportCode
from model_runner_client.model_set import Slot, SlotState
from model_runner_client.models import ModelEndpoint
from model_runner_client.outcomes import MEANING, Kind, Outcome
from model_runner_client.policy import Check, Streaks
from model_runner_client.registry import Registry
from model_runner_client.reports import Reports
from model_runner_client.results import CallStatus
from model_runner_client.sources import StaticModels
from model_runner_client.supervision import Checks
from tests.hosts import until

S, F, T = CallStatus.SUCCESS, CallStatus.FAILURE, CallStatus.TIMEOUT
MF, MT, CF = ReportCode.MULTIPLE_FAILED, ReportCode.MULTIPLE_TIMEOUT, ReportCode.CONNECTION_FAILED
BI = ReportCode.BAD_IMPLEMENTATION
READY, NOT_COUNTED, HELD_BACK = "ready", "not counted", "held back"

#: kind: (status, answered, the report after one such call with limits of 1, the check after
#: one with limits of 2, the calls then skipped while cooling down, Setup tries again, what a
#: Setup ending so does)
EXPECTED: dict[Kind, tuple[CallStatus, bool, ReportCode | None, Check | None, int, bool,
                           object]] = {
    Kind.SUCCESS: (S, True, None, None, 0, False, READY),
    Kind.MODEL_FAILURE: (F, True, MF, None, 0, False, BI),
    Kind.MISSING_METHOD: (F, True, MF, None, 0, False, CF),
    Kind.NEEDS_SETUP: (T, True, MT, Check.SETUP, 1, False, CF),
    Kind.TIMEOUT: (T, False, MT, Check.PROBE, 1, True, CF),
    Kind.UNREACHABLE: (T, False, CF, Check.PROBE, 1, True, CF),
    Kind.BUSY: (T, False, MT, None, 0, True, CF),
    Kind.NOT_SENT: (T, False, None, None, 0, False, CF),
    Kind.SKIPPED: (T, False, None, None, 0, False, CF),
    Kind.SETTING_UP: (T, False, None, None, 0, False, CF),
    Kind.LEFT: (F, False, None, None, 0, False, CF),
    Kind.UNTRUSTED: (F, False, CF, None, 0, False, CF),
    Kind.REFUSED: (F, False, None, None, 0, False, NOT_COUNTED),
    Kind.COORDINATOR: (F, False, None, None, 0, False, NOT_COUNTED),
    Kind.CLIENT_BUG: (F, False, None, None, 0, True, NOT_COUNTED),
    Kind.MISSING_BASE_CLASS: (F, False, None, None, 0, False, HELD_BACK),
}


class RecordedReports(Reports):
    def __init__(self) -> None:
        super().__init__(EventHub())
        self.codes: list[ReportCode] = []
        self.held_back: list[str] = []

    def report(self, endpoint: ModelEndpoint, code: ReportCode, reason: str) -> None:
        self.codes.append(code)
        super().report(endpoint, code, reason)

    def hold_back(self, endpoint: ModelEndpoint, detail: str) -> None:
        self.held_back.append(detail)
        super().hold_back(endpoint, detail)


class ScriptedConnection:
    """Setup answers each of `setups` in turn (then SUCCESS); health is SUCCESS."""

    def __init__(self, *setups: Kind) -> None:
        self.setups = list(setups)
        self.closed = False

    async def setup(self, payload: bytes, timeout: float) -> Outcome:
        await anyio.lowlevel.checkpoint()
        return Outcome(self.setups.pop(0) if self.setups else Kind.SUCCESS, detail="scripted")

    async def health(self, service: str, timeout: float) -> Outcome:
        return Outcome(Kind.SUCCESS)

    def reconnect(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class OneConnection:
    def __init__(self, connection: ScriptedConnection) -> None:
        self.connection = connection

    def connect(self, endpoint: ModelEndpoint) -> ScriptedConnection:
        return self.connection


def registry(connection: ScriptedConnection, limit: int,
             attempts: int = 1) -> tuple[Registry, RecordedReports]:
    reports = RecordedReports()
    checks = Checks(setup_payload=b"", setup_timeout=1.0, connect_attempts=attempts,
                    probe_timeout=1.0)
    return Registry(connector=OneConnection(connection),  # type: ignore[arg-type]
                    checks=checks, reports=reports, max_consecutive_failures=limit,
                    max_consecutive_timeouts=limit), reports


def ready_slot(registry: Registry) -> Slot:
    endpoint = ModelEndpoint("m", "127.0.0.1", 1, "d")
    streaks = Streaks(registry.max_consecutive_failures, registry.max_consecutive_timeouts)
    slot = Slot(endpoint, ScriptedConnection(), streaks,  # type: ignore[arg-type]
                state=SlotState.READY)
    registry.models.add(slot)
    return slot


def test_every_kind_has_one_meaning() -> None:
    assert set(MEANING) == set(Kind) == set(EXPECTED)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_a_result_s_status_and_whether_the_model_answered(kind: Kind) -> None:
    status, answered, *_ = EXPECTED[kind]
    assert Outcome(kind).status is status
    assert MEANING[kind].answered is answered


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_what_a_call_ending_so_does_to_its_model(kind: Kind) -> None:
    _, _, report, check, skips, *_ = EXPECTED[kind]
    impatient, reports = registry(ScriptedConnection(), limit=1)
    slot = ready_slot(impatient)
    impatient.apply_policy(slot, "predict", Outcome(kind, detail="scripted"))
    assert reports.codes == ([report] if report else [])
    assert slot.gone is (report is not None)

    patient, reports = registry(ScriptedConnection(), limit=2)
    slot = ready_slot(patient)
    patient.apply_policy(slot, "predict", Outcome(kind, detail="scripted"))
    # A host that is not the cruncher's is never called again, whatever the limits.
    at_once = kind is Kind.UNTRUSTED
    assert slot.pending is check and slot.gone is at_once
    assert slot.streaks.skips_left == skips
    assert reports.codes == ([CF] if at_once else [])


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
async def test_whether_setup_tries_again(kind: Kind) -> None:
    retried = EXPECTED[kind][5]
    checks = Checks(setup_payload=b"", setup_timeout=1.0, connect_attempts=2, probe_timeout=1.0)
    slot = Slot(ModelEndpoint("m", "127.0.0.1", 1, "d"),
                ScriptedConnection(kind), Streaks(3, 3))  # type: ignore[arg-type]
    outcome = await checks.set_up(slot)
    assert outcome is not None
    assert outcome.kind is (Kind.SUCCESS if retried else kind)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
async def test_what_a_setup_ending_so_does_to_its_model(kind: Kind) -> None:
    end = EXPECTED[kind][6]
    connection = ScriptedConnection(kind)
    held, reports = registry(connection, limit=3)
    async with anyio.create_task_group() as group:
        group.start_soon(held.run, StaticModels([]))
        held.upsert(ModelEndpoint("m", "127.0.0.1", 1, "d"))
        slot = held.models.slots["m"]
        await until(lambda: slot.state is not SlotState.SETTING_UP)
        group.cancel_scope.cancel()
    if end == READY:
        assert slot.state is SlotState.READY and reports.codes == []
    elif end == HELD_BACK:
        assert slot.gone and reports.codes == [] and reports.held_back == ["scripted"]
    elif end == NOT_COUNTED:
        assert slot.gone and reports.codes == [] and reports.held_back == []
    else:
        assert slot.gone and reports.codes == [end]
    assert connection.closed is slot.gone
