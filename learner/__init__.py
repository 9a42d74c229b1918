"""The model: frozen encoder, item table, user state, online head, and the Recommender facade.

The learner does no I/O and knows nothing of Kafka: decoded events in, tensors and ids out.
"""

from __future__ import annotations

from learner.recommender import LearnReport, ModelConfig, Recommender
from learner.types import Event, Item, ItemDeletion, ScoredItem, UserRecommendation

__all__ = [
    "Event",
    "Item",
    "ItemDeletion",
    "LearnReport",
    "ModelConfig",
    "Recommender",
    "ScoredItem",
    "UserRecommendation",
]
