"""Every model ``freshrec evaluate`` compares, with its tuning grid: baselines and freshrec's own.

freshrec runs through the very ``Recommender`` the worker uses, wrapped as a ``StreamModel``;
its ablations change only what they name: ``freshrec_content_only`` (frozen encoder embeddings,
no head training, no co-occurrence), ``freshrec_ids_only`` (random item vectors instead of the
encoder, everything else trained), ``freshrec`` (the full model) and ``freshrec_profiles`` (the
full model given the users' profiles, which every other model ignores).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from learner.baselines import ISGD, ItemKNN, Popularity, RiverBiasedMF, Trending
from learner.head import HeadConfig
from learner.recommender import Encoder, ModelConfig, Recommender
from learner.stream_model import StreamModel
from learner.types import Event, Item, UserProfile

__all__ = ["MODEL_NAMES", "FreshrecStream", "ModelSpec", "RandomEncoder", "model_specs"]

MODEL_NAMES = (
    "popularity",
    "trending",
    "itemknn",
    "itemknn_recent",
    "isgd",
    "river_biasedmf",
    "freshrec_content_only",
    "freshrec_ids_only",
    "freshrec",
    "freshrec_profiles",
)


class RandomEncoder:
    """Deterministic random unit vectors keyed by text: an 'encoder' that knows nothing.

    Examples
    --------
    >>> enc = RandomEncoder(dim=4, seed=1)
    >>> bool(torch.equal(enc.encode(["a"]), enc.encode(["a"])))
    True
    """

    def __init__(self, dim: int = 384, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self._dim = dim
        self.seed = seed
        self._device = torch.device(device)

    @property
    def name(self) -> str:
        return f"random-{self._dim}-{self.seed}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    def encode(self, texts: Sequence[str]) -> Tensor:
        rows = []
        for text in texts:
            digest = hashlib.sha256(f"{self.seed}\0{text}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            rows.append(torch.randn(self._dim, generator=g))
        if not rows:
            return torch.empty((0, self._dim), device=self._device)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1).to(self._device)


class FreshrecStream:
    """The worker's ``Recommender`` as a test-then-train ``StreamModel``."""

    def __init__(
        self,
        name: str,
        encoder: Encoder,
        config: ModelConfig,
        *,
        ids_only: bool = False,
        profiles: bool = False,
    ) -> None:
        self.name = name
        self.ids_only = ids_only
        self.use_profiles = profiles
        self.recommender = Recommender(encoder, config)

    def set_catalog(self, items: Sequence[Item]) -> None:
        if self.ids_only:  # the text is the id: the encoder learns nothing from content
            items = [Item(it.item_id, it.item_id) for it in items]
        self.recommender.upsert_items(items)

    def set_profiles(self, profiles: Sequence[UserProfile]) -> None:
        if self.use_profiles:
            self.recommender.upsert_profiles(profiles)

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        want = k
        while True:
            listed = self.recommender.recommend([user_id], want, explain=False)[0].items
            ids = [it.item_id for it in listed if it.item_id not in exclude][:k]
            if len(ids) == k or len(listed) < want:
                return ids
            want *= 2

    def learn_one(self, event: Event) -> None:
        self.recommender.learn([event])


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model from a parameter dict, and the grid its parameters are tuned on."""

    name: str
    factory: Callable[[Mapping[str, Any]], StreamModel]
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    rank_sample: int | None = None  # rank only a seeded sample of events (slow models)


def _freshrec_config(params: Mapping[str, Any], base: ModelConfig, seed: int) -> ModelConfig:
    head_keys = {"rank", "lr", "item_lr", "l2", "negatives"}
    head = replace(base.head, seed=seed, **{k: v for k, v in params.items() if k in head_keys})
    rest = {k: v for k, v in params.items() if k not in head_keys}
    return replace(base, head=head, **rest)


def model_specs(encoder: Encoder, *, seed: int = 0, diversity: float = 0.0) -> dict[str, ModelSpec]:
    """The models of ``MODEL_NAMES`` with their grids (the same budget rules for all);
    freshrec's models rank with MMR lambda ``diversity`` (``ModelConfig.diversity``)."""
    # Evaluation learns one event at a time; the head steps on 32 pending pairs at a time.
    # 2048 neighbours keep ml-100k's co-occurrence exact (1682 items).
    # On ml-100k, content similarity ranks badly on its own and per-item bias updates from
    # BPR hurt the top-10 (docs/results.md), so the head starts as pure co-occurrence and learns
    # how much content and trending to add.
    base = ModelConfig(
        min_events=1,
        min_train_pairs=32,
        cooc_neighbours=2048,
        bilinear_init=0.0,
        head=HeadConfig(seed=seed, item_lr=0.0),
        diversity=diversity,
    )
    random_encoder = RandomEncoder(encoder.dim, seed=seed, device=encoder.device)
    freshrec_grid: dict[str, Sequence[Any]] = {
        "lr": [0.0003, 0.003],
        "trend_init": [0.0, 0.1],
    }
    return {
        "popularity": ModelSpec("popularity", lambda p: Popularity()),
        "trending": ModelSpec(
            "trending",
            lambda p: Trending(**p),
            {"half_life_s": [86400, 259200, 604800, 1209600, 2592000, 7776000]},
        ),
        "itemknn": ModelSpec(
            "itemknn", lambda p: ItemKNN(**p), {"alpha": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]}
        ),
        "itemknn_recent": ModelSpec(
            "itemknn_recent",
            lambda p: ItemKNN(**p),
            {"recent_n": [5, 10, 20, 30, 50, 100]},
        ),
        "isgd": ModelSpec(
            "isgd",
            lambda p: ISGD(seed=seed, **p),
            {"factors": [10, 50], "lr": [0.05, 0.1, 0.2], "reg": [0.3]},
        ),
        "river_biasedmf": ModelSpec(
            "river_biasedmf",
            lambda p: RiverBiasedMF(seed=seed, **p),
            {"lr": [0.002, 0.005, 0.01], "n_factors": [5, 10]},
            rank_sample=2000,
        ),
        "freshrec_content_only": ModelSpec(
            "freshrec_content_only",
            lambda p: FreshrecStream(
                "freshrec_content_only",
                encoder,
                _freshrec_config(
                    p, replace(base, train=False, cooc=False, trend_signal=False), seed
                ),
            ),
            {"min_events": [1, 3, 5]},
        ),
        "freshrec_ids_only": ModelSpec(
            "freshrec_ids_only",
            lambda p: FreshrecStream(
                "freshrec_ids_only", random_encoder, _freshrec_config(p, base, seed), ids_only=True
            ),
            freshrec_grid,
        ),
        "freshrec": ModelSpec(
            "freshrec",
            lambda p: FreshrecStream("freshrec", encoder, _freshrec_config(p, base, seed)),
            freshrec_grid,
        ),
        # The same model and grid, given ml-100k's demographics (docs/results/profiles.md).
        "freshrec_profiles": ModelSpec(
            "freshrec_profiles",
            lambda p: FreshrecStream(
                "freshrec_profiles", encoder, _freshrec_config(p, base, seed), profiles=True
            ),
            freshrec_grid,
        ),
    }
