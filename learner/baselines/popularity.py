"""All-time popularity: recommend the items with the most events so far."""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
from numpy.typing import NDArray

from learner.baselines._items import ItemIndex, grow_rows
from learner.types import Event, Item

__all__ = ["Popularity"]


class Popularity:
    """Counts every event of every item; everyone gets the most-counted items they lack.

    Ties (and items never counted) keep catalog order: first the catalog given to
    :meth:`set_catalog`, then items in the order the stream first shows them.

    Examples
    --------
    >>> from learner.types import Event
    >>> model = Popularity()
    >>> for n, item in enumerate(["a", "b", "b", "c", "b", "c"]):
    ...     model.learn_one(Event(str(n), f"u{n}", item, "click", None, n))
    >>> model.rank("anyone", k=2, exclude=set()), model.rank("anyone", k=2, exclude={"b"})
    (['b', 'c'], ['c', 'a'])
    """

    name = "popularity"

    def __init__(self) -> None:
        self._index = ItemIndex()
        self._counts: NDArray[np.float64] = np.zeros(0)

    def set_catalog(self, items: Sequence[Item]) -> None:
        """Register the catalog so that ties and uncounted items follow its order."""
        for item in items:
            self._index.add(item.item_id)
        self._counts = grow_rows(self._counts, len(self._index))

    def learn_one(self, event: Event) -> None:
        """Count the event's item once."""
        row = self._index.add(event.item_id)
        self._counts = grow_rows(self._counts, row + 1)
        self._counts[row] += 1.0

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        """The ``k`` most-counted items not in ``exclude`` (the user is ignored)."""
        n = len(self._index)
        order = np.argsort(-self._counts[:n], kind="stable")
        return self._index.take(order, k, exclude)
