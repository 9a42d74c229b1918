"""Specifications of consumer.replay.Pacer (on a fake clock) and learner.online_metrics."""

from __future__ import annotations

import pytest

from consumer import replay
from consumer.replay import Pacer, load_dataset
from learner.online_metrics import HitRateTracker


class FakeClock:
    """monotonic() and sleep() without real time passing."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(replay.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(replay.time, "sleep", fake.sleep)
    return fake


def test_unlimited_pacer_never_sleeps(clock: FakeClock) -> None:
    pacer = Pacer(0.0)
    assert [pacer.wait(n) for n in (0, 1, 10**9)] == [0.0, 0.0, 0.0]
    assert clock.slept == []


def test_pacer_sleeps_until_each_iteration_is_due(clock: FakeClock) -> None:
    pacer = Pacer(10.0)  # one iteration every 0.1 s
    assert pacer.wait(0) == 0.0
    assert pacer.wait(1) == pytest.approx(0.1)
    assert pacer.wait(5) == pytest.approx(0.4)
    assert clock.now == pytest.approx(100.5)


def test_pacer_does_not_drift_after_a_slow_iteration(clock: FakeClock) -> None:
    pacer = Pacer(10.0)
    clock.now += 0.35  # iteration 1 took far longer than its 0.1 s
    assert pacer.wait(2) == 0.0  # already late: no sleep
    assert pacer.wait(4) == pytest.approx(0.05)  # due at start + 0.4, not now + 0.2
    assert clock.now == pytest.approx(100.4)


def test_unknown_dataset_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("ml-1b")


def test_hit_rate_counts_only_users_who_were_sent_a_list() -> None:
    tracker = HitRateTracker()
    first = tracker.observe([("u1", "a"), ("u2", "b")])
    assert (first.trials, first.hits) == (0, 0)
    tracker.remember("u1", ["a", "b"])
    update = tracker.observe([("u1", "a"), ("u1", "c"), ("u2", "a")])
    assert (update.trials, update.hits, update.drift) == (2, 1, False)
    assert tracker.rate == 0.5


def test_hit_rate_compares_with_the_latest_list_only() -> None:
    tracker = HitRateTracker()
    tracker.remember("u1", ["a"])
    tracker.remember("u1", ["b"])
    assert tracker.observe([("u1", "a")]).hits == 0


def test_hit_rate_forgets_the_least_recently_sent_users_beyond_its_bound() -> None:
    tracker = HitRateTracker(max_users=2)
    tracker.remember("u1", ["a"])
    tracker.remember("u2", ["a"])
    tracker.remember("u1", ["a"])  # u1 is now the most recent
    tracker.remember("u3", ["a"])
    update = tracker.observe([("u1", "a"), ("u2", "a"), ("u3", "a")])
    assert (update.trials, update.hits) == (2, 2)


def test_a_collapse_of_the_hit_rate_is_detected_as_drift() -> None:
    tracker = HitRateTracker()
    tracker.remember("u1", ["a"])
    assert not any(tracker.observe([("u1", "a")]).drift for _ in range(300))
    drifted = any(tracker.observe([("u1", "z")]).drift for _ in range(300))
    assert drifted
    assert tracker.drifts >= 1
