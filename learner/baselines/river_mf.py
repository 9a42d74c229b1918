"""River's ``reco.BiasedMF`` through River's own API, as the external peer."""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any

import numpy as np

from learner.evaluate import seeded_sample
from learner.types import Event, Item

__all__ = ["RIVER_RANK_SAMPLE", "RiverBiasedMF", "seeded_sample"]

# Ranking calls predict_one once per catalog item (milliseconds per list), so the harness ranks
# only this many events of the stream, a seeded sample (learn_one still sees every event).
RIVER_RANK_SAMPLE = 2000


class RiverBiasedMF:
    """``river.reco.BiasedMF`` trained on the rating values, ranked by ``predict_one``.

    ``learn_one(user=..., item=..., y=rating)`` per event (``y = 1.0`` for events without a
    value); a list is every item the model has learned about, not in ``exclude``, by
    ``predict_one`` descending (ties in order of first sight), filled with not-yet-seen catalog
    items in catalog order. Both optimisers are ``optim.SGD(lr)``; latent vectors start from
    ``optim.initializers.Normal(0, 0.1, seed=seed)``. River's ``predict_one`` lazily creates the
    vectors of a user it has never seen, so ranking a new user draws from that initialiser.

    Parameters
    ----------
    n_factors
        Latent dimensions.
    lr
        SGD step size of biases and latent vectors.
    l2
        L2 regularisation of biases and latent vectors.
    seed
        Seed of River's latent initialiser.

    Examples
    --------
    >>> from learner.types import Event
    >>> model = RiverBiasedMF(seed=3)
    >>> for n, (user, item, rating) in enumerate([("u1", "a", 5.0), ("u2", "b", 1.0)] * 20):
    ...     model.learn_one(Event(str(n), user, item, "rating", rating, n))
    >>> model.rank("u3", k=2, exclude=set())
    ['a', 'b']
    """

    name = "river_biasedmf"

    def __init__(
        self, n_factors: int = 10, lr: float = 0.01, l2: float = 0.0, seed: int = 0
    ) -> None:
        from river import optim, reco

        self.n_factors = n_factors
        self.lr = lr
        self.l2 = l2
        self.seed = seed
        self.model: Any = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(lr),
            latent_optimizer=optim.SGD(lr),
            l2_bias=l2,
            l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self._catalog: list[str] = []
        self._in_catalog: set[str] = set()
        self._learned: list[str] = []
        self._is_learned: set[str] = set()

    def set_catalog(self, items: Sequence[Item]) -> None:
        """Remember the catalog's ids (order fills short lists)."""
        for item in items:
            if item.item_id not in self._in_catalog:
                self._in_catalog.add(item.item_id)
                self._catalog.append(item.item_id)

    def learn_one(self, event: Event) -> None:
        """``BiasedMF.learn_one(user, item, y=rating)``."""
        y = 1.0 if event.value is None else float(event.value)
        self.model.learn_one(user=event.user_id, item=event.item_id, y=y)
        if event.item_id not in self._is_learned:
            self._is_learned.add(event.item_id)
            self._learned.append(event.item_id)

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        """Learned items by ``predict_one`` descending, then unseen catalog items."""
        candidates = [item for item in self._learned if item not in exclude]
        predict = self.model.predict_one
        scores = np.array([predict(user=user_id, item=item) for item in candidates])
        order = np.argsort(-scores, kind="stable")[:k]
        ranked = [candidates[int(position)] for position in order]
        for item in self._catalog:
            if len(ranked) >= k:
                break
            if item not in self._is_learned and item not in exclude:
                ranked.append(item)
        return ranked
