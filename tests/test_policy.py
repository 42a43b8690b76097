"""The failure policy in isolation: streaks, cooling down, verdicts."""

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from model_runner_client.events import ReportCode
from model_runner_client.policy import Streaks


def test_failures_count_per_method_and_reset_on_that_method_success() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=3)
    assert streaks.failure("predict") is None
    streaks.success("tick")  # another method: predict's streak goes on
    assert streaks.failure("predict") is None
    streaks.success("predict")
    assert streaks.failure("predict") is None
    assert streaks.failure("predict") is None
    assert streaks.failure("predict") == "MULTIPLE_FAILED"


def test_timeouts_skip_ceil_half_the_streak_then_let_one_through() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=5)
    pattern = []
    for _ in range(12):
        if streaks.take_skip():
            pattern.append("skip")
            continue
        pattern.append("call")
        if streaks.timeout() is not None:
            pattern.append("disconnect")
            break
    # streak 1 -> skip 1, 2 -> skip 1, 3 -> skip 2, 4 -> skip 2, 5 -> disconnect
    assert pattern == ["call", "skip", "call", "skip", "call", "skip", "skip", "call", "skip",
                       "skip", "call", "disconnect"]


def test_any_answer_ends_a_timeout_streak() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=2)
    assert streaks.timeout() is None
    assert streaks.failure("predict") is None  # answered (badly): responsive
    assert streaks.timeouts == 0 and not streaks.take_skip()
    assert streaks.timeout() is None
    streaks.success("tick")
    assert streaks.timeout() is None


def test_unreachable_streak_is_a_connection_failure() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=2)
    assert streaks.timeout(unreachable=True) is None
    streaks.take_skip()
    assert streaks.timeout(unreachable=True) == "CONNECTION_FAILED"
    mixed = Streaks(max_failures=3, max_timeouts=2)
    mixed.timeout()
    mixed.take_skip()
    assert mixed.timeout(unreachable=True) == "MULTIPLE_TIMEOUT"


def test_forgive_forgets_every_streak() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=3)
    streaks.failure("predict")
    streaks.failure("predict")
    streaks.timeout(unreachable=True)
    streaks.forgive()
    assert not streaks.take_skip()
    assert streaks.failure("predict") is None  # counted from zero again
    assert streaks.timeout() is None and streaks.timeout() is None


def test_busy_answers_count_as_timeouts_without_cooling_down() -> None:
    """A model stuck for good is disconnected after max_timeouts + 1 ticks: the first timeout,
    one skipped tick, then a busy answer (at no cost) on every tick."""
    streaks = Streaks(max_failures=3, max_timeouts=100)
    ticks, verdict = 1, streaks.timeout()  # the call that hung, held to the deadline
    while verdict is None:
        ticks += 1
        if not streaks.take_skip():
            verdict = streaks.timeout(busy=True)
    assert verdict == ReportCode.MULTIPLE_TIMEOUT
    assert ticks == 101


def test_a_model_slow_once_is_forgiven_when_it_answers_again() -> None:
    streaks = Streaks(max_failures=3, max_timeouts=3)
    assert streaks.timeout() is None  # slow once: its call outlived the deadline
    assert streaks.take_skip()
    assert streaks.timeout(busy=True) is None  # still finishing that call
    assert not streaks.take_skip()
    streaks.success("predict")  # done: answers again
    assert streaks.timeouts == 0 and not streaks.take_skip()


# --- any sequence, as a state machine (README: the failure policy) -----------------------


class StreakMachine(RuleBasedStateMachine):
    """Any sequence of successes, failures (of two methods) and timeouts (answered or not):
    a verdict comes exactly when a streak reaches its limit, with the right code; a success
    resets what it should; cooling down skips ceil(streak/2) calls."""

    def __init__(self) -> None:
        super().__init__()
        self.streaks = Streaks(max_failures=3, max_timeouts=4)
        self.failures: dict[str, int] = {}
        self.timeouts = 0
        self.unreachable = 0
        self.disconnected = False

    @rule(method=st.sampled_from(["tick", "predict"]))
    def success(self, method: str) -> None:
        if self.disconnected:
            return
        self.streaks.success(method)
        self.failures.pop(method, None)
        self.timeouts = self.unreachable = 0

    @rule(method=st.sampled_from(["tick", "predict"]))
    def failure(self, method: str) -> None:
        if self.disconnected:
            return
        verdict = self.streaks.failure(method)
        self.failures[method] = self.failures.get(method, 0) + 1
        self.timeouts = self.unreachable = 0
        expected = "MULTIPLE_FAILED" if self.failures[method] >= 3 else None
        assert verdict == expected
        self.disconnected = verdict is not None

    @rule(unreachable=st.booleans())
    def timeout(self, unreachable: bool) -> None:
        if self.disconnected:
            return
        verdict = self.streaks.timeout(unreachable=unreachable)
        self.timeouts += 1
        self.unreachable = self.unreachable + 1 if unreachable else 0
        if self.timeouts >= 4:
            # CONNECTION_FAILED only when nothing ever answered in the whole streak.
            expected = "CONNECTION_FAILED" if self.unreachable >= self.timeouts \
                else "MULTIPLE_TIMEOUT"
            assert verdict == expected
            self.disconnected = True
        else:
            assert verdict is None
            assert self.streaks.skips_left == math.ceil(self.timeouts / 2)

    @invariant()
    def counts_agree(self) -> None:
        if not self.disconnected:
            assert self.streaks.timeouts == self.timeouts
            assert {k: v for k, v in self.streaks.failures.items() if v} == self.failures


TestStreakMachine = StreakMachine.TestCase
TestStreakMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
