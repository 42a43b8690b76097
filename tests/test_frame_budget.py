"""FrameBudget (transports/call.py), the pure rule that closes a connection, on either
transport, whose host sends more frames than its calls need."""

from __future__ import annotations

from model_runner_client.transports.call import FrameBudget


def spend(budget: FrameBudget, frames: int, now: float = 0.0) -> int:
    """Frames spent before the budget refused one (all of them if none was refused)."""
    for spent in range(frames):
        if not budget.spend(now):
            return spent
    return frames


def test_an_idle_connection_gets_the_free_frames_then_refuses() -> None:
    budget = FrameBudget(now=0.0)
    assert spend(budget, 10_000) == FrameBudget.FREE


def test_each_open_call_grants_its_frames() -> None:
    budget = FrameBudget(now=0.0)
    for _ in range(100):
        budget.opened()
    assert spend(budget, 100_000) == FrameBudget.FREE + 100 * FrameBudget.PER_CALL


def test_an_answers_bytes_grant_one_frame_per_kib() -> None:
    budget = FrameBudget(now=0.0)
    budget.opened()
    budget.delivered(64 * 1024 * 1024)
    assert spend(budget, 10**6) == FrameBudget.FREE + FrameBudget.PER_CALL + 65_536


def test_unused_grants_go_when_their_calls_end() -> None:
    """However many honest calls a connection made, an idle one may flood FREE frames only."""
    budget = FrameBudget(now=0.0)
    for _ in range(1000):
        budget.opened()
        assert spend(budget, 5) == 5  # headers, data, trailers, two window updates
        budget.ended()
    assert spend(budget, 10_000) == FrameBudget.FREE


def test_the_free_frames_refill_with_time_up_to_their_ceiling() -> None:
    budget = FrameBudget(now=0.0)
    assert spend(budget, 10_000) == FrameBudget.FREE
    half = FrameBudget.REFILL_SECONDS / 2
    assert spend(budget, 10_000, now=half) == FrameBudget.FREE // 2
    # A day idle refills FREE, not a day's worth.
    assert spend(budget, 10_000, now=86_400.0) == FrameBudget.FREE


def test_honest_ticks_forever_never_run_out() -> None:
    """A call per tick, each answered in five frames, and a keepalive PING per minute."""
    budget = FrameBudget(now=0.0)
    for tick in range(100_000):
        now = tick * 0.1
        budget.opened()
        assert spend(budget, 5, now) == 5
        budget.ended()
        if tick % 600 == 0:
            assert budget.spend(now)
