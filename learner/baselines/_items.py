"""Shared plumbing of the baselines: item ids to dense rows, growable arrays, top-k walking."""

from __future__ import annotations

from collections.abc import Iterable, Set

import numpy as np
from numpy.typing import NDArray

__all__ = ["ItemIndex", "grow_rows", "grow_square"]


class ItemIndex:
    """Item ids and dense row numbers ``0..n-1``, in order of first sight (catalog first).

    Examples
    --------
    >>> index = ItemIndex()
    >>> index.add("b"), index.add("a"), index.add("b"), len(index)
    (0, 1, 0, 2)
    >>> index.get("z") is None, index.take([1, 0], k=5, exclude={"a"})
    (True, ['b'])
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def add(self, item_id: str) -> int:
        """The row of ``item_id``, given the next free row if it is new."""
        row = self._rows.get(item_id)
        if row is None:
            row = len(self.ids)
            self._rows[item_id] = row
            self.ids.append(item_id)
        return row

    def get(self, item_id: str) -> int | None:
        """The row of ``item_id``, None if it was never added."""
        return self._rows.get(item_id)

    def take(self, order: Iterable[int], k: int, exclude: Set[str]) -> list[str]:
        """The ids of the first ``k`` rows of ``order`` that are not in ``exclude``."""
        out: list[str] = []
        if k <= 0:
            return out
        for row in order:
            item_id = self.ids[int(row)]
            if item_id not in exclude:
                out.append(item_id)
                if len(out) == k:
                    break
        return out


def _capacity(needed: int, current: int) -> int:
    return max(needed, 2 * current, 64)


def grow_rows(array: NDArray[np.float64], needed: int) -> NDArray[np.float64]:
    """``array`` itself if it has ``needed`` rows, else a zero-padded copy with room to spare.

    Examples
    --------
    >>> grow_rows(np.ones((2, 3)), 3).shape
    (64, 3)
    """
    if needed <= array.shape[0]:
        return array
    grown = np.zeros((_capacity(needed, array.shape[0]), *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def grow_square(array: NDArray[np.float32], needed: int) -> NDArray[np.float32]:
    """Like :func:`grow_rows` for a square matrix: both axes grow, the old block is kept.

    Examples
    --------
    >>> grown = grow_square(np.ones((2, 2), dtype=np.float32), 3)
    >>> grown.shape, float(grown.sum())
    ((64, 64), 4.0)
    """
    size = array.shape[0]
    if needed <= size:
        return array
    grown = np.zeros((_capacity(needed, size),) * 2, dtype=array.dtype)
    grown[:size, :size] = array
    return grown
