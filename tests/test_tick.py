"""The tick's steps in process, with scripted connections: `plan` (whom to call), the fan-out
(fanout.py: one deadline, settled by futures) and `settle` (blame, policy, results). The
network is what is replaced; the process tests (test_client.py and others) run the same steps
over real hosts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest

from model_runner.wire import CallResponse, Status, encode_value
from model_runner_client.encoding import ArgumentError, ResultDecoder
from model_runner_client.fanout import Fanout, Job
from model_runner_client.model_set import Slot, SlotState
from model_runner_client.models import ModelEndpoint
from model_runner_client.outcomes import Kind, Outcome
from model_runner_client.policy import Streaks
from model_runner_client.results import CallStatus
from model_runner_client.tick import plan, settle

pytestmark = pytest.mark.anyio

ANSWER = bytes(CallResponse(status=Status(code="SUCCESS"), method_response=encode_value(7)))
MISSING = bytes(CallResponse(status=Status(code="BAD_IMPLEMENTATION",
                                           message="the model has no method 'predit'")))


class Scripted:
    """A call in flight (what transports.call.Call offers the fan-out)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.arrived = 0
        self.sender: asyncio.Task[None] | None = None


class ScriptedConnection:
    """Answers each call after `delay` seconds with `answer` (never when None), or raises
    `refuse` at once when sending."""

    def __init__(self, name: str, answer: bytes | None = ANSWER, delay: float = 0.0,
                 refuse: Exception | None = None) -> None:
        self.endpoint = ModelEndpoint(name, "127.0.0.1", 1, "d")
        self.answer, self.delay, self.refuse = answer, delay, refuse
        self.sent: list[bytes] = []
        self.abandoned = 0

    def start_call(self, message: bytes, deadline: float) -> Scripted:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append(message)
        call = Scripted()
        if self.answer is not None:
            asyncio.get_running_loop().call_later(self.delay, self._settle, call)
        return call

    def _settle(self, call: Scripted) -> None:
        if not call.future.done():
            call.arrived = time.monotonic_ns()
            call.future.set_result(self.answer)

    def finish_call(self, call: Scripted) -> bytes:
        return call.future.result()  # type: ignore[no-any-return]

    def abandon_call(self, call: Scripted) -> None:
        self.abandoned += 1
        call.future.cancel()


def job(connection: ScriptedConnection) -> Job:
    return Job(connection, b"request")  # type: ignore[arg-type]


async def test_answers_count_and_a_silent_model_times_out_at_the_one_deadline() -> None:
    fast, silent = ScriptedConnection("fast"), ScriptedConnection("silent", answer=None)
    started = time.monotonic()
    outcomes = await Fanout(10).run([job(fast), job(silent)], 0.3, ResultDecoder(None))
    took = time.monotonic() - started
    assert [o.kind for o in outcomes] == [Kind.SUCCESS, Kind.TIMEOUT]
    assert outcomes[0].output == 7 and outcomes[1].detail == "no answer within 0.3s"
    assert silent.abandoned == 1 and fast.abandoned == 0
    assert 0.3 <= took < 1.3  # the deadline, with a generous margin


async def test_all_answered_returns_without_waiting_for_the_deadline() -> None:
    connections = [ScriptedConnection(f"m{i}") for i in range(50)]
    started = time.monotonic()
    outcomes = await Fanout(10).run([job(c) for c in connections], 5.0, ResultDecoder(None))
    assert all(o.kind is Kind.SUCCESS for o in outcomes)
    assert time.monotonic() - started < 2.5  # far under the 5 s deadline


async def test_calls_beyond_the_bound_wait_and_those_never_sent_are_not_sent() -> None:
    hung, queued = ScriptedConnection("hung", answer=None), ScriptedConnection("queued")
    outcomes = await Fanout(1).run([job(hung), job(queued)], 0.2, ResultDecoder(None))
    assert [o.kind for o in outcomes] == [Kind.TIMEOUT, Kind.NOT_SENT]
    assert queued.sent == [] and "raise max_concurrent_calls" in outcomes[1].detail


async def test_an_answer_after_the_deadline_is_a_timeout_however_the_loop_ran() -> None:
    late = ScriptedConnection("late", delay=0.0)

    class Late(ScriptedConnection):
        def _settle(self, call: Scripted) -> None:
            super()._settle(call)
            call.arrived += 10**12  # stamped long after the deadline

    slow = Late("slow")
    outcomes = await Fanout(10).run([job(late), job(slow)], 0.5, ResultDecoder(None))
    assert [o.kind for o in outcomes] == [Kind.SUCCESS, Kind.TIMEOUT]


async def test_a_call_that_cannot_be_sent_ends_with_its_error_and_the_others_go_on() -> None:
    refused = ScriptedConnection("refused", refuse=ConnectionRefusedError("refused"))
    fine = ScriptedConnection("fine")
    outcomes = await Fanout(10).run([job(refused), job(fine)], 1.0, ResultDecoder(None))
    assert [o.kind for o in outcomes] == [Kind.UNREACHABLE, Kind.SUCCESS]
    assert "refused" in outcomes[0].detail


async def test_a_cancelled_run_abandons_what_it_started() -> None:
    silent = ScriptedConnection("silent", answer=None)
    with anyio.move_on_after(0.1):
        await Fanout(10).run([job(silent)], 30.0, ResultDecoder(None))
    assert silent.abandoned == 1


def slot(connection: ScriptedConnection, state: SlotState = SlotState.READY,
         skips: int = 0) -> Slot:
    streaks = Streaks(3, 3)
    streaks.skips_left, streaks.timeouts = skips, skips
    return Slot(connection.endpoint, connection, streaks, state=state)  # type: ignore[arg-type]


def test_plan_calls_ready_models_and_says_why_the_others_are_not() -> None:
    ready, joining, cooling = (ScriptedConnection(n) for n in ("ready", "joining", "cooling"))
    targets = [("ready", slot(ready)), ("joining", slot(joining, SlotState.SETTING_UP)),
               ("cooling", slot(cooling, skips=1)), ("gone", None)]
    tick = plan(targets, b"shared", lambda model_id: None)
    assert [e.model_id for e in tick.endpoints] == ["ready", "joining", "cooling", "gone"]
    assert [o.kind if o else None for o in tick.outcomes] == [
        None, Kind.SETTING_UP, Kind.SKIPPED, Kind.LEFT]
    assert [j.connection.endpoint for j in tick.jobs] == [ready.endpoint]
    assert tick.called[0][0] == 0
    assert tick.jobs[0].message == b"\x00\x00\x00\x00\x06shared"  # framed once
    assert "1 timeout in a row" in (tick.outcomes[2] or Outcome(Kind.SUCCESS)).detail


def test_plan_builds_every_request_before_anything_is_decided() -> None:
    good, bad = ScriptedConnection("good"), ScriptedConnection("bad")
    cooling = slot(ScriptedConnection("cooling"), skips=1)

    def per_model(endpoint: ModelEndpoint) -> bytes:
        if endpoint.model_id == "bad":
            raise ArgumentError("not encodable")
        return endpoint.model_id.encode()

    with pytest.raises(ArgumentError):
        plan([("cooling", cooling), ("good", slot(good)), ("bad", slot(bad))], per_model,
             lambda model_id: None)
    assert cooling.streaks.skips_left == 1  # nothing was counted


def test_settle_counts_answers_unless_the_coordinator_is_at_fault() -> None:
    a, b = ScriptedConnection("a"), ScriptedConnection("b")
    tick = plan([("a", slot(a)), ("b", slot(b)), ("gone", None)], b"x", lambda model_id: None)
    counted: list[tuple[str, Kind]] = []

    def policy(s: Slot, method: str, outcome: Outcome) -> None:
        counted.append((s.endpoint.model_id, outcome.kind))

    missing = Outcome(Kind.MISSING_METHOD, detail="BAD_IMPLEMENTATION: no method")
    results, ended, mistake = settle(tick, "predit", [missing, missing], policy)
    assert mistake is not None and "typo" in mistake.message
    assert [o.kind for o in ended] == [Kind.COORDINATOR, Kind.COORDINATOR, Kind.LEFT]
    assert [r.status for r in results] == [CallStatus.FAILURE] * 3
    assert counted == [("a", Kind.COORDINATOR), ("b", Kind.COORDINATOR)]

    tick = plan([("a", slot(a)), ("b", slot(b))], b"x", lambda model_id: None)
    counted.clear()
    results, ended, mistake = settle(
        tick, "predict", [Outcome(Kind.SUCCESS, 7), Outcome(Kind.TIMEOUT)], policy)
    assert mistake is None and counted == [("a", Kind.SUCCESS), ("b", Kind.TIMEOUT)]
    assert [r.output for r in results] == [7, None]

    # Every model unreachable at once: the coordinator's network, counted against none.
    tick = plan([("a", slot(a)), ("b", slot(b))], b"x", lambda model_id: None)
    counted.clear()
    unreachable = Outcome(Kind.UNREACHABLE, detail="unreachable: refused")
    results, ended, mistake = settle(tick, "predict", [unreachable, unreachable], policy)
    assert mistake is not None and mistake.key == "unreachable" and counted == []
    assert [r.status for r in results] == [CallStatus.TIMEOUT] * 2
