"""User profiles for cold start: the profile text template and the table of profile vectors.

A profile (``age``, ``gender``, ``occupation``, ``zip`` and any other attributes) becomes one
short text, which the same frozen encoder as the items embeds. The recommender uses that vector
as the starting representation of a user with no events and blends it out as their own events
arrive (``Recommender`` and ``ModelConfig.profile_weight``).

The template, in this order, parts joined by ``", "``:

- ``age`` (a number) -> its bucket: ``age under 18``, ``age 18-24``, ``age 25-34``,
  ``age 35-44``, ``age 45-54``, ``age 55-64``, ``age 65+`` (exact ages would make every user's
  text different and say little more);
- ``gender`` -> ``male`` / ``female`` for ``M`` / ``F`` (any case), else the value as given;
- ``occupation`` -> ``occupation: <value>``;
- ``zip`` (or ``zip_code``) -> ``region: <name>``: a US ZIP code's first digit names one of the
  ten national areas of the US postal system; a code starting with a letter is ``outside the
  US`` (ml-100k has a few Canadian postal codes); anything else is left out;
- every other attribute, sorted by name, as ``<name>: <value>`` (lists joined by ``", "``).

Examples
--------
>>> profile_text({"age": 29, "gender": "F", "occupation": "engineer", "zip": "94043"})
'age 25-34, female, occupation: engineer, region: US west coast, Alaska and Hawaii'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from learner.types import AttributeValue

__all__ = [
    "AGE_BUCKETS",
    "ProfileTable",
    "age_bucket",
    "profile_share",
    "profile_text",
    "zip_region",
]

# (lowest age of the bucket, its label); the last bucket is open-ended.
AGE_BUCKETS: tuple[tuple[int, str], ...] = (
    (0, "under 18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-54"),
    (55, "55-64"),
    (65, "65+"),
)

# The first digit of a US ZIP code: the postal system's ten national areas.
_ZIP_REGIONS: dict[str, str] = {
    "0": "US northeast, New England",
    "1": "US northeast, New York and Pennsylvania",
    "2": "US mid-Atlantic, Virginia and the Carolinas",
    "3": "US southeast, Florida and Georgia",
    "4": "US midwest, Ohio, Michigan and Kentucky",
    "5": "US upper midwest, Minnesota and Wisconsin",
    "6": "US central, Illinois, Missouri and Kansas",
    "7": "US south central, Texas and Louisiana",
    "8": "US mountain west, Colorado and Arizona",
    "9": "US west coast, Alaska and Hawaii",
}
_GENDERS = {"m": "male", "f": "female"}
_KNOWN = ("age", "gender", "occupation", "zip", "zip_code")


def profile_share(events: Tensor, weight: float) -> Tensor:
    """The profile's share ``b`` of a user's starting representation after ``events`` events:
    ``b = weight / (weight + events)``. The profile counts as ``weight`` events: it is the
    whole representation before the first event, half of it after ``weight`` events, and it
    fades as ``1 / n`` after that (0 everywhere when ``weight`` is 0).

    Examples
    --------
    >>> profile_share(torch.tensor([0, 1, 3, 9]), weight=1.0).tolist()
    [1.0, 0.5, 0.25, 0.10000000149011612]
    """
    if weight <= 0:
        return torch.zeros(events.shape, dtype=torch.float32, device=events.device)
    return weight / (weight + events.to(torch.float32))


def age_bucket(age: float) -> str:
    """The bucket label of an age in years.

    Examples
    --------
    >>> age_bucket(7), age_bucket(24), age_bucket(25), age_bucket(73)
    ('under 18', '18-24', '25-34', '65+')
    """
    label = AGE_BUCKETS[0][1]
    for lowest, name in AGE_BUCKETS:
        if age >= lowest:
            label = name
    return label


def zip_region(code: str) -> str | None:
    """The region of a postal code: a US ZIP code's national area, or ``outside the US`` for a
    code that starts with a letter; ``None`` when it says nothing.

    Examples
    --------
    >>> zip_region("85711"), zip_region("T8H1N"), zip_region("")
    ('US mountain west, Colorado and Arizona', 'outside the US', None)
    """
    code = code.strip()
    if not code:
        return None
    if code[0].isdigit():
        return _ZIP_REGIONS[code[0]]
    if code[0].isalpha():
        return "outside the US"
    return None


def _shown(value: AttributeValue) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def _age(value: AttributeValue) -> float | None:
    if isinstance(value, bool | list):
        return None
    try:
        age = float(value)
    except ValueError:
        return None
    return age if 0 <= age < 150 else None


def profile_text(attributes: Mapping[str, AttributeValue]) -> str:
    """The text the encoder embeds for a profile (the template is in the module's docstring).

    Examples
    --------
    >>> profile_text({"zip_code": "T8H1N", "gender": "m", "age": "17", "likes": ["jazz", "tea"]})
    'age under 18, male, region: outside the US, likes: jazz, tea'
    >>> profile_text({})
    ''
    """
    parts: list[str] = []
    age = _age(attributes["age"]) if "age" in attributes else None
    if age is not None:
        parts.append(f"age {age_bucket(age)}")
    elif "age" in attributes:
        parts.append(f"age: {_shown(attributes['age'])}")
    if "gender" in attributes:
        gender = _shown(attributes["gender"]).strip()
        parts.append(_GENDERS.get(gender.lower(), gender))
    if "occupation" in attributes:
        parts.append(f"occupation: {_shown(attributes['occupation'])}")
    for key in ("zip", "zip_code"):
        region = zip_region(_shown(attributes[key])) if key in attributes else None
        if region is not None:
            parts.append(f"region: {region}")
            break
    for key in sorted(attributes):
        if key not in _KNOWN:
            parts.append(f"{key}: {_shown(attributes[key])}")
    return ", ".join(part for part in parts if part)


class ProfileTable:
    """Users' profile vectors, one row per *distinct* profile text.

    Users whose profiles read the same (the template's buckets make that common: ml-100k's 943
    users have far fewer distinct texts) share one row, so a user costs a dictionary entry and
    a row costs ``dim`` floats. A row is freed when its last user leaves.

    Examples
    --------
    >>> table = ProfileTable(dim=2)
    >>> table.missing(["a", "b", "a"])
    ['a', 'b']
    >>> table.add_texts(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> table.assign("u1", "a"); table.assign("u2", "a"); table.assign("u3", "b")
    >>> vectors, found = table.lookup(["u2", "zz", "u3"])
    >>> vectors.tolist(), found.tolist()
    ([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], [True, False, True])
    >>> len(table), table.distinct_texts
    (3, 2)
    >>> table.remove(["u3"]), table.distinct_texts
    (1, 1)
    """

    def __init__(self, dim: int, *, device: torch.device | str = "cpu", capacity: int = 64) -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.vectors = torch.zeros((capacity, dim), device=self.device)
        self._user_text: dict[str, str] = {}
        self._text_row: dict[str, int] = {}
        self._refs: dict[int, int] = {}
        self._free: list[int] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._user_text)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._user_text

    @property
    def distinct_texts(self) -> int:
        return len(self._text_row)

    def text_of(self, user_id: str) -> str | None:
        return self._user_text.get(user_id)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct ``texts`` that have no vector yet, in first-seen order."""
        return [t for t in dict.fromkeys(texts) if t not in self._text_row]

    def add_texts(self, texts: Sequence[str], vectors: Tensor) -> None:
        """Store the vectors of new texts (rows with no user yet are freed on the next remove)."""
        for text, vector in zip(texts, vectors, strict=True):
            row = self._text_row.get(text)
            if row is None:
                row = self._free.pop() if self._free else self._grow()
                self._text_row[text] = row
                self._refs[row] = 0
            self.vectors[row] = vector.to(self.device, torch.float32)

    def _grow(self) -> int:
        row = self._next
        self._next += 1
        if row >= self.vectors.shape[0]:
            bigger = torch.zeros((2 * self.vectors.shape[0], self.dim), device=self.device)
            bigger[:row] = self.vectors[:row]
            self.vectors = bigger
        return row

    def assign(self, user_id: str, text: str) -> None:
        """Give ``user_id`` the profile ``text`` (whose vector :meth:`add_texts` stored)."""
        if self._user_text.get(user_id) == text:
            return
        row = self._text_row[text]
        self._release(user_id)
        self._user_text[user_id] = text
        self._refs[row] += 1

    def remove(self, user_ids: Sequence[str]) -> int:
        """Forget these users' profiles; returns how many had one."""
        return sum(self._release(uid) for uid in user_ids)

    def _release(self, user_id: str) -> bool:
        text = self._user_text.pop(user_id, None)
        if text is None:
            return False
        row = self._text_row[text]
        self._refs[row] -= 1
        if self._refs[row] <= 0:
            del self._refs[row], self._text_row[text]
            self._free.append(row)
        return True

    def lookup(self, user_ids: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(vectors (B, dim), found (B,) bool)``: zeros where a user has no profile."""
        rows = [
            self._text_row[t] if (t := self._user_text.get(uid)) is not None else -1
            for uid in user_ids
        ]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        found = index >= 0
        out = (
            torch.where(found.unsqueeze(-1), self.vectors[index.clamp(min=0)], 0.0)
            if rows
            else torch.zeros((0, self.dim), device=self.device)
        )
        return out, found
