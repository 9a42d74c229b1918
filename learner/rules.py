"""Business rules on published lists: excluded items, excluded attribute values, per-value caps.

A :class:`Rules` value says what no list may hold (these item ids; items whose attribute has
one of these values) and how many items of one attribute value a list may hold at most (at most
3 per genre). :class:`RuleIndex` keeps, per item row, what the ranking needs to apply them on
tensors: a mask of excluded rows and the value codes of the capped attributes.

The recommender applies them while it ranks (``learner.rerank``): excluded rows never enter a
user's candidates, and a cap is a constraint of the greedy selection, so a list is still full
(``k`` items) whenever enough eligible items exist.

Examples
--------
>>> from learner.types import Item
>>> rules = Rules(exclude_items=["i3"], exclude_values={"genres": ["Horror"]},
...               max_per_value={"genres": 2})
>>> rules.excludes(Item("i1", "Scream", attributes={"genres": ["Horror", "Thriller"]}))
True
>>> rules.excludes(Item("i2", "Heat", attributes={"genres": ["Thriller"]}))
False
>>> rules.active, Rules().active
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from learner.types import AttributeValue, Item

__all__ = ["RuleIndex", "Rules", "value_keys"]


def value_keys(value: AttributeValue | bool) -> list[str]:
    """The values an attribute holds, as the strings rules compare: each element of a list, a
    number in its shortest form (``1995`` and ``1995.0`` are the same value).

    Examples
    --------
    >>> value_keys(["Action", "Comedy"]), value_keys(1995), value_keys(1995.0), value_keys(2.5)
    (['Action', 'Comedy'], ['1995'], ['1995'], ['2.5'])
    """
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, int | float):
        return [str(int(value))] if float(value).is_integer() else [repr(float(value))]
    return [str(value)]


def _frozen_values(given: Mapping[str, Iterable[object]]) -> Mapping[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for name, values in given.items():
        keys: set[str] = set()
        for v in values:
            keys.update(value_keys(v))  # type: ignore[arg-type]
        out[str(name)] = frozenset(keys)
    return MappingProxyType(out)


@dataclass(frozen=True, eq=False, init=False)
class Rules:
    """Filters on every published list (the ``[rules]`` table of the config file).

    Parameters
    ----------
    exclude_items
        Item ids never recommended.
    exclude_values
        Attribute name to values: an item with any of these values (any element, for a list
        attribute) is never recommended.
    max_per_value
        Attribute name to the most items of one value in a list. An item with several values
        (genres) counts once towards each, and fits only while every one is below its cap.
    """

    exclude_items: frozenset[str] = field(default_factory=frozenset)
    exclude_values: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    max_per_value: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __init__(
        self,
        exclude_items: Iterable[str] = (),
        exclude_values: Mapping[str, Iterable[object]] | None = None,
        max_per_value: Mapping[str, int] | None = None,
    ) -> None:
        caps = dict(max_per_value or {})
        for name, cap in caps.items():
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"max_per_value.{name} must be an integer of at least 1")
        object.__setattr__(self, "exclude_items", frozenset(str(i) for i in exclude_items))
        object.__setattr__(self, "exclude_values", _frozen_values(exclude_values or {}))
        object.__setattr__(self, "max_per_value", MappingProxyType(caps))

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return bool(self.exclude_items or self.has_exclusions or self.max_per_value)

    @property
    def has_exclusions(self) -> bool:
        return bool(self.exclude_items) or any(self.exclude_values.values())

    def excludes(self, item: Item) -> bool:
        """Whether ``item`` may never be recommended."""
        if item.item_id in self.exclude_items:
            return True
        for name, banned in self.exclude_values.items():
            value = item.attributes.get(name)
            if value is not None and not banned.isdisjoint(value_keys(value)):
                return True
        return False

    def as_dict(self) -> dict[str, object]:
        """Plain, sorted data (for JSON and the TOML printer); empty parts left out.

        Examples
        --------
        >>> Rules(["b", "a"], {"genres": ["Horror"]}, {"genres": 3}).as_dict()
        {'exclude_items': ['a', 'b'], 'exclude_values': {'genres': ['Horror']}, \
'max_per_value': {'genres': 3}}
        """
        out: dict[str, object] = {}
        if self.exclude_items:
            out["exclude_items"] = sorted(self.exclude_items)
        if self.exclude_values:
            out["exclude_values"] = {k: sorted(v) for k, v in sorted(self.exclude_values.items())}
        if self.max_per_value:
            out["max_per_value"] = dict(sorted(self.max_per_value.items()))
        return out

    def __reduce__(self) -> tuple[type[Rules], tuple[object, ...]]:
        # Pickle and deepcopy rebuild from plain data (a mappingproxy cannot be pickled).
        values = {k: sorted(v) for k, v in self.exclude_values.items()}
        return (Rules, (sorted(self.exclude_items), values, dict(self.max_per_value)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rules) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(repr(self.as_dict()))

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Rules({parts})"


class RuleIndex:
    """Per item row: excluded or not, and the codes of its capped attribute values.

    ``codes`` is ``(rows, M)``, one column per value an item holds (``-1`` padding); a code
    names one (attribute, value) pair and ``caps[code]`` is that attribute's cap.

    Examples
    --------
    >>> idx = RuleIndex(Rules(exclude_values={"genres": ["Horror"]}, max_per_value={"genres": 1}))
    >>> idx.update([0, 1], [Item("a", "A", attributes={"genres": ["Horror"]}),
    ...                     Item("b", "B", attributes={"genres": ["Drama", "War"]})])
    >>> idx.banned[:2].tolist(), idx.codes[:2].tolist(), idx.caps.tolist()
    ([True, False], [[0, -1], [1, 2]], [1, 1, 1])
    """

    def __init__(
        self, rules: Rules, *, device: torch.device | str = "cpu", capacity: int = 1024
    ) -> None:
        self.rules = rules
        self.device = torch.device(device)
        self.banned = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.codes = torch.full((capacity, 1), -1, dtype=torch.long, device=self.device)
        self._vocab: dict[tuple[str, str], int] = {}
        self._caps: list[int] = []
        self.caps = torch.zeros(0, dtype=torch.long, device=self.device)

    @property
    def has_caps(self) -> bool:
        return bool(self.rules.max_per_value)

    def update(self, rows: Sequence[int], items: Sequence[Item]) -> None:
        """Record the rule-relevant facts of ``items`` (stored at ``rows``)."""
        if not rows:
            return
        self._ensure_capacity(max(rows) + 1)
        banned = [self.rules.excludes(it) for it in items]
        coded = [self._codes_of(it) for it in items]
        width = max(1, max(len(c) for c in coded))
        if width > self.codes.shape[1]:
            pad = torch.full(
                (self.codes.shape[0], width - self.codes.shape[1]), -1, dtype=torch.long
            )
            self.codes = torch.cat([self.codes, pad.to(self.device)], dim=1)
        block = torch.full((len(rows), self.codes.shape[1]), -1, dtype=torch.long)
        for n, c in enumerate(coded):
            block[n, : len(c)] = torch.tensor(c, dtype=torch.long)
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.codes[idx] = block.to(self.device)
        self.banned[idx] = torch.tensor(banned, dtype=torch.bool, device=self.device)
        self.caps = torch.tensor(self._caps, dtype=torch.long, device=self.device)

    def _codes_of(self, item: Item) -> list[int]:
        out: list[int] = []
        for name, cap in self.rules.max_per_value.items():
            value = item.attributes.get(name)
            if value is None:
                continue
            for key in dict.fromkeys(value_keys(value)):
                code = self._vocab.get((name, key))
                if code is None:
                    code = self._vocab[(name, key)] = len(self._caps)
                    self._caps.append(cap)
                out.append(code)
        return out

    def _ensure_capacity(self, n: int) -> None:
        cap = self.banned.shape[0]
        if n <= cap:
            return
        new = max(n, 2 * cap)
        banned = torch.zeros(new, dtype=torch.bool, device=self.device)
        banned[:cap] = self.banned
        codes = torch.full((new, self.codes.shape[1]), -1, dtype=torch.long, device=self.device)
        codes[:cap] = self.codes
        self.banned, self.codes = banned, codes

    def allowed(self, n: int) -> Tensor:
        """``(n,)``: rows not excluded (rows never updated count as allowed)."""
        self._ensure_capacity(n)
        return ~self.banned[:n]
