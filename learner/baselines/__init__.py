"""Baselines evaluated under the same prequential protocol as freshrec, one model per module."""

from __future__ import annotations

from learner.baselines.isgd import ISGD
from learner.baselines.itemknn import ItemKNN
from learner.baselines.popularity import Popularity
from learner.baselines.river_mf import RIVER_RANK_SAMPLE, RiverBiasedMF, seeded_sample
from learner.baselines.trending import Trending

__all__ = [
    "ISGD",
    "RIVER_RANK_SAMPLE",
    "ItemKNN",
    "Popularity",
    "RiverBiasedMF",
    "Trending",
    "seeded_sample",
]
