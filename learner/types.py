"""The learner's value types: decoded events and items in, scored items out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EVENT_TYPES",
    "Event",
    "EventType",
    "Item",
    "ItemDeletion",
    "ProfileDeletion",
    "ScoredItem",
    "Strategy",
    "UserProfile",
    "UserRecommendation",
]

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
Strategy = Literal["personal", "popular", "blend"]
AttributeValue = str | float | int | list[str]


@dataclass(frozen=True, slots=True)
class Event:
    """One user behaviour event (DESIGN §3), already validated.

    Examples
    --------
    >>> Event("e1", "u1", "i9", "click", None, 1_700_000_000_000).user_id
    'u1'
    """

    event_id: str
    user_id: str
    item_id: str
    type: EventType
    value: float | None
    ts: int  # milliseconds since the epoch


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog item (DESIGN §3). ``text`` is what the encoder embeds.

    Examples
    --------
    >>> Item("i1", "Toy Story (1995)", attributes={"genres": ["Animation"]}).text
    'Toy Story (1995). genres: Animation'
    """

    item_id: str
    title: str
    description: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    image: bytes | None = None
    ts: int = 0

    @property
    def text(self) -> str:
        """Title, then attributes, then description: the encoder's input."""
        parts = [self.title]
        for key in sorted(self.attributes):
            value = self.attributes[key]
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            parts.append(f"{key}: {shown}")
        if self.description:
            parts.append(self.description)
        return ". ".join(parts)


@dataclass(frozen=True, slots=True)
class ItemDeletion:
    """A tombstone: the item leaves the catalog."""

    item_id: str
    ts: int = 0


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What is known about a user before (and besides) their events: the users topic's value.

    ``learner.profiles.profile_text`` turns ``attributes`` into the text the encoder embeds.

    Examples
    --------
    >>> UserProfile("u1", {"age": 24, "gender": "M", "occupation": "technician"}).user_id
    'u1'
    """

    user_id: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    ts: int = 0


@dataclass(frozen=True, slots=True)
class ProfileDeletion:
    """A tombstone of the users topic: the user's profile is forgotten."""

    user_id: str
    ts: int = 0


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """One recommended item with its score and the history item that explains it."""

    item_id: str
    score: float
    because: str | None = None


@dataclass(frozen=True, slots=True)
class UserRecommendation:
    """A user's top-K list as the learner produced it."""

    user_id: str
    items: Sequence[ScoredItem]
    strategy: Strategy
    model_version: str
    event_ts: int  # ts of the newest event of this user that the list reflects
