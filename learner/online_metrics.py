"""Online hit rate of the lists actually sent, with River's ADWIN watching it for drift."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from river import drift, stats

__all__ = ["HitRateTracker", "HitUpdate"]


@dataclass(frozen=True)
class HitUpdate:
    """What a batch of events did to the online hit rate."""

    trials: int
    hits: int
    drift: bool


class HitRateTracker:
    """Was each event's item in the list that its user was last sent?

    Remembers the last list per user for a bounded number of users (least recently used go).

    Examples
    --------
    >>> t = HitRateTracker()
    >>> t.observe([("u1", "a")])  # u1 was never sent a list: no trial
    HitUpdate(trials=0, hits=0, drift=False)
    >>> t.remember("u1", ["a", "b"])
    >>> t.observe([("u1", "b"), ("u1", "z")]), t.rate
    (HitUpdate(trials=2, hits=1, drift=False), 0.5)
    """

    def __init__(self, max_users: int = 1_000_000, adwin_delta: float = 0.002) -> None:
        self.max_users = max_users
        # A tuple, not a set: ten ids are found as fast by a scan, in a fifth of the memory.
        self._last: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._mean = stats.Mean()
        self._adwin = drift.ADWIN(delta=adwin_delta)  # type: ignore[no-untyped-call]
        self.drifts = 0

    @property
    def rate(self) -> float:
        return float(self._mean.get())

    def observe(self, user_items: Iterable[tuple[str, str]]) -> HitUpdate:
        """Score events (user, item) against the lists last sent, before they are learned."""
        trials = hits = 0
        drifted = False
        for user, item in user_items:
            shown = self._last.get(user)
            if shown is None:
                continue
            hit = item in shown
            trials += 1
            hits += hit
            self._mean.update(float(hit))
            self._adwin.update(float(hit))  # type: ignore[no-untyped-call]
            if self._adwin.drift_detected:
                drifted = True
                self.drifts += 1
        return HitUpdate(trials, hits, drifted)

    def remember(self, user: str, items: Sequence[str]) -> None:
        """Record the list just sent to ``user``."""
        self._last[user] = tuple(items)
        self._last.move_to_end(user)
        while len(self._last) > self.max_users:
            self._last.popitem(last=False)
