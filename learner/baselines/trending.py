"""Trending popularity: event counts that halve every ``half_life_s`` seconds of event time."""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
from numpy.typing import NDArray

from learner.baselines._items import ItemIndex, grow_rows
from learner.types import Event, Item

__all__ = ["Trending"]

# Rescale the stored counts once the newest weight exceeds 2**_RESCALE_EXPONENT (no overflow).
_RESCALE_EXPONENT = 64.0


class Trending:
    """Time-decayed counts: an event of age ``a`` seconds weighs ``2 ** (-a / half_life_s)``.

    Weights are stored relative to a reference time, as ``2 ** ((ts - ref) / half_life_s)``, so
    an event costs O(1); the ranking only depends on ratios, which decay leaves unchanged.
    Ties (and items never counted) keep catalog order.

    Parameters
    ----------
    half_life_s
        Seconds of event time (``Event.ts``) after which an event counts half.

    Examples
    --------
    >>> from learner.types import Event
    >>> model = Trending(half_life_s=3600.0)
    >>> model.learn_one(Event("1", "u1", "old", "click", None, 0))
    >>> model.learn_one(Event("2", "u2", "old", "click", None, 0))
    >>> model.learn_one(Event("3", "u3", "new", "click", None, 2 * 3_600_000 + 1))
    >>> model.rank("anyone", k=2, exclude=set())
    ['new', 'old']
    """

    name = "trending"

    def __init__(self, half_life_s: float = 7 * 86_400.0) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = half_life_s
        self._index = ItemIndex()
        self._weights: NDArray[np.float64] = np.zeros(0)
        self._ref_s: float | None = None

    def set_catalog(self, items: Sequence[Item]) -> None:
        """Register the catalog so that ties and uncounted items follow its order."""
        for item in items:
            self._index.add(item.item_id)
        self._weights = grow_rows(self._weights, len(self._index))

    def learn_one(self, event: Event) -> None:
        """Add the event's weight, relative to the reference time, to its item."""
        row = self._index.add(event.item_id)
        self._weights = grow_rows(self._weights, row + 1)
        ts_s = event.ts / 1000.0
        if self._ref_s is None:
            self._ref_s = ts_s
        exponent = (ts_s - self._ref_s) / self.half_life_s
        if exponent > _RESCALE_EXPONENT:
            self._weights *= 2.0**-exponent
            self._ref_s, exponent = ts_s, 0.0
        self._weights[row] += 2.0**exponent

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        """The ``k`` items with the highest decayed count not in ``exclude``."""
        n = len(self._index)
        order = np.argsort(-self._weights[:n], kind="stable")
        return self._index.take(order, k, exclude)
