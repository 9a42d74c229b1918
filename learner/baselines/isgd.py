"""ISGD: incremental SGD matrix factorisation for positive-only feedback (Vinagre et al. 2014)."""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
from numpy.typing import NDArray

from learner.baselines._items import ItemIndex, grow_rows
from learner.types import Event, Item

__all__ = ["ISGD"]


class ISGD:
    """Vinagre, Jorge and Gama (2014), "Fast incremental matrix factorization for recommendation
    with positive-only feedback", Algorithm 1, one SGD step per event.

    Every event is the target 1 for ``(u, i)``: ``err = 1 - p_u . q_i``, then
    ``p_u += lr * (err * q_i - reg * p_u)`` and ``q_i += lr * (err * p_u - reg * q_i)`` (in the
    paper's order: ``q_i`` sees the updated ``p_u``). Vectors of new users and items are drawn
    from N(0, ``init_std``) when they first appear in the stream, from a
    ``numpy.random.Generator(seed)``. A user's list holds the items whose prediction is closest
    to 1 (smallest ``|1 - p_u . q_i|``). Users not yet seen get all-time popularity; items not
    yet seen fill short lists in catalog order.

    Parameters
    ----------
    factors
        Latent dimensions.
    lr
        SGD step size (the paper's eta).
    reg
        L2 regularisation (the paper's lambda).
    seed
        Seed of the initial vectors.
    init_std
        Standard deviation of the initial vectors.

    Examples
    --------
    >>> from learner.types import Event
    >>> model = ISGD(factors=4, lr=0.1, seed=1)
    >>> for n in range(100):
    ...     model.learn_one(Event(str(n), "u1", "a", "click", None, n))
    >>> round(model.predict("u1", "a"), 2)  # the target of every step is 1
    0.99
    """

    name = "isgd"

    def __init__(
        self,
        factors: int = 10,
        lr: float = 0.05,
        reg: float = 0.01,
        seed: int = 0,
        init_std: float = 0.1,
    ) -> None:
        if factors <= 0 or lr <= 0 or reg < 0 or init_std < 0:
            raise ValueError("need factors > 0, lr > 0, reg >= 0, init_std >= 0")
        self.factors = factors
        self.lr = lr
        self.reg = reg
        self.seed = seed
        self.init_std = init_std
        self._rng = np.random.default_rng(seed)
        self._index = ItemIndex()
        self._items: NDArray[np.float64] = np.zeros((0, factors))
        self._has_vector: NDArray[np.float64] = np.zeros(0)  # 1.0 once the item was seen
        self._counts: NDArray[np.float64] = np.zeros(0)
        self._users: dict[str, NDArray[np.float64]] = {}

    def set_catalog(self, items: Sequence[Item]) -> None:
        """Register the catalog's ids (vectors still start at an item's first event)."""
        for item in items:
            self._index.add(item.item_id)
        self._ensure(len(self._index))

    def _ensure(self, size: int) -> None:
        self._items = grow_rows(self._items, size)
        self._has_vector = grow_rows(self._has_vector, size)
        self._counts = grow_rows(self._counts, size)

    def _draw(self) -> NDArray[np.float64]:
        return self._rng.normal(0.0, self.init_std, self.factors)

    def learn_one(self, event: Event) -> None:
        """One SGD step towards ``p_u . q_i = 1``."""
        row = self._index.add(event.item_id)
        self._ensure(row + 1)
        self._counts[row] += 1.0
        user = self._users.get(event.user_id)
        if user is None:
            user = self._users[event.user_id] = self._draw()
        if not self._has_vector[row]:
            self._items[row] = self._draw()
            self._has_vector[row] = 1.0
        item = self._items[row]  # a view: updated in place
        err = 1.0 - float(user @ item)
        user += self.lr * (err * item - self.reg * user)
        item += self.lr * (err * user - self.reg * item)

    def predict(self, user_id: str, item_id: str) -> float:
        """``p_u . q_i``, or 0 when the user or the item has no vector yet."""
        row = self._index.get(item_id)
        user = self._users.get(user_id)
        if user is None or row is None or not self._has_vector[row]:
            return 0.0
        return float(user @ self._items[row])

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        """Items by ``|1 - p_u . q_i|`` ascending; popularity for users not yet seen."""
        n = len(self._index)
        user = self._users.get(user_id)
        if user is None:
            order = np.argsort(-self._counts[:n], kind="stable")
        else:
            distance = np.abs(1.0 - self._items[:n] @ user)
            order = np.argsort(np.where(self._has_vector[:n] > 0, distance, np.inf), kind="stable")
        return self._index.take(order, k, exclude)
