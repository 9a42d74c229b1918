"""The contract every model in a prequential evaluation meets: ``rank`` then ``learn_one``.

Examples
--------
>>> from learner.types import Event
>>> class MostRecent:
...     name = "most_recent"
...     def __init__(self): self.seen = []
...     def rank(self, user_id, k, exclude):
...         return [i for i in reversed(self.seen) if i not in exclude][:k]
...     def learn_one(self, event): self.seen.append(event.item_id)
>>> m = MostRecent(); m.learn_one(Event("e", "u", "a", "click", None, 0))
>>> isinstance(m, StreamModel), m.rank("v", 10, set())
(True, ['a'])
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Protocol, runtime_checkable

from learner.types import Event, Item, UserProfile

__all__ = ["CatalogAware", "ProfileAware", "StreamModel"]


@runtime_checkable
class StreamModel(Protocol):
    """A recommender evaluated test-then-train, one event at a time.

    ``rank`` must only use what ``learn_one`` has been shown so far; it returns at most ``k``
    item ids, best first, none of them in ``exclude`` (the user's consumed items).
    """

    name: str

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]: ...

    def learn_one(self, event: Event) -> None: ...


@runtime_checkable
class CatalogAware(Protocol):
    """A model that wants the catalog (ids and texts) before the stream starts."""

    def set_catalog(self, items: Sequence[Item]) -> None: ...


@runtime_checkable
class ProfileAware(Protocol):
    """A model that takes users' profiles (what is known of them besides their events) before
    the stream starts; it may ignore them."""

    def set_profiles(self, profiles: Sequence[UserProfile]) -> None: ...
