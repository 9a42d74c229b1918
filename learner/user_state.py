"""Per-user state: a time-decayed, event-weighted sum of item vectors plus a bounded history.

A user's vector ``h_u`` is kept un-normalised together with the time of its newest event, so
that folding an event in is O(d): decay ``h_u`` to the event's time and add the weighted item
vector. A whole micro-batch folds in with one ``index_add_``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["EventWeights", "HistoryEntry", "UserStateStore", "decay"]


def decay(weight: Tensor, dt_s: Tensor, half_life_s: float) -> Tensor:
    """Exponential time decay: ``weight`` halves every ``half_life_s`` seconds of ``dt_s``.

    Examples
    --------
    >>> decay(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3600.0]), 3600.0)
    tensor([1.0000, 0.5000])
    """
    return weight * torch.exp2(-dt_s / half_life_s)


@dataclass(frozen=True)
class EventWeights:
    """How much each event type says about taste; ratings scale with their value.

    Examples
    --------
    >>> EventWeights().of("purchase", None), EventWeights().of("rating", 5.0)
    (3.0, 1.0)
    """

    by_type: Mapping[str, float] = field(
        default_factory=lambda: {
            "view": 0.25,
            "click": 1.0,
            "add_to_cart": 2.0,
            "purchase": 3.0,
            "rating": 1.0,
        }
    )
    rating_scale: float = 5.0

    def of(self, event_type: str, value: float | None) -> float:
        base = self.by_type[event_type]
        if event_type == "rating" and value is not None:
            # Any rating means the user chose the item; higher ratings say more.
            return base * (0.5 + 0.5 * max(0.0, min(value, self.rating_scale)) / self.rating_scale)
        return base


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One remembered interaction: which item row, with what weight, when."""

    item_row: int
    weight: float
    ts_ms: int


class UserStateStore:
    """All users' vectors in one growable tensor, plus histories and consumed sets.

    Examples
    --------
    >>> store = UserStateStore(dim=2, half_life_s=3600.0, history_len=3)
    >>> rows = store.rows_for(["u1"])
    >>> store.fold(rows, torch.tensor([0]), torch.tensor([[1.0, 0.0]]),
    ...            torch.tensor([1.0]), torch.tensor([0]))
    >>> store.fold(rows, torch.tensor([1]), torch.tensor([[0.0, 1.0]]),
    ...            torch.tensor([1.0]), torch.tensor([3_600_000]))
    >>> store.vectors[rows]
    tensor([[0.5000, 1.0000]])
    >>> store.event_count("u1"), sorted(store.consumed("u1"))
    (2, [0, 1])
    """

    def __init__(
        self,
        dim: int,
        *,
        half_life_s: float,
        history_len: int = 50,
        device: torch.device | str = "cpu",
        capacity: int = 1024,
    ) -> None:
        self.dim = dim
        self.half_life_s = half_life_s
        self.history_len = history_len
        self.device = torch.device(device)
        self.vectors = torch.zeros((capacity, dim), device=self.device)
        self.last_ts_ms = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.counts = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self._rows: dict[str, int] = {}
        self._histories: list[deque[HistoryEntry]] = []
        self._consumed: list[set[int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._rows

    def row(self, user_id: str) -> int | None:
        return self._rows.get(user_id)

    def rows_for(self, user_ids: Sequence[str]) -> Tensor:
        """Rows of ``user_ids``, creating empty state for users seen for the first time."""
        out = []
        for uid in user_ids:
            row = self._rows.get(uid)
            if row is None:
                row = len(self._rows)
                self._ensure_capacity(row + 1)
                self._rows[uid] = row
                self._histories.append(deque(maxlen=self.history_len))
                self._consumed.append(set())
            out.append(row)
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def _ensure_capacity(self, n: int) -> None:
        cap = self.vectors.shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        self.vectors = _grow(self.vectors, new_cap)
        self.last_ts_ms = _grow(self.last_ts_ms, new_cap)
        self.counts = _grow(self.counts, new_cap)

    def fold(
        self,
        user_rows: Tensor,
        item_rows: Tensor,
        item_vectors: Tensor,
        weights: Tensor,
        ts_ms: Tensor,
    ) -> None:
        """Fold a batch of events into user state, exactly as folding them one by one would.

        Each touched user is decayed to its newest time ``T`` (its previous newest or the
        newest event of the batch), and each event adds ``weight * 2^(-(T - ts)/half_life)``
        times its item vector. Out-of-order events therefore count as much as they would have
        had they arrived in order.
        """
        if user_rows.numel() == 0:
            return
        ts_ms = ts_ms.to(self.device, torch.int64)
        # Work on the touched users only: the batch costs O(batch), not O(all users).
        touched, inverse = torch.unique(user_rows, return_inverse=True)
        previous = self.last_ts_ms[touched]
        newest = previous.clone()
        newest.scatter_reduce_(0, inverse, ts_ms, reduce="amax")
        had_events = self.counts[touched] > 0
        dt_old = (newest - previous).double() / 1000.0
        factor = torch.where(
            had_events, torch.exp2(-dt_old / self.half_life_s), torch.zeros_like(dt_old)
        )
        self.vectors[touched] *= factor.to(self.vectors.dtype).unsqueeze(-1)
        dt_new = (newest[inverse] - ts_ms).double() / 1000.0
        w = decay(weights.double().to(self.device), dt_new, self.half_life_s)
        self.vectors.index_add_(0, user_rows, item_vectors * w.to(self.vectors.dtype).unsqueeze(-1))
        self.last_ts_ms[touched] = newest
        self.counts.index_add_(0, user_rows, torch.ones_like(user_rows))
        for u, i, wt, t in zip(
            user_rows.tolist(), item_rows.tolist(), weights.tolist(), ts_ms.tolist(), strict=True
        ):
            self._histories[u].append(HistoryEntry(i, float(wt), int(t)))
            self._consumed[u].add(i)

    def event_count(self, user_id: str) -> int:
        row = self._rows.get(user_id)
        return 0 if row is None else int(self.counts[row])

    def history(self, user_id: str) -> Sequence[HistoryEntry]:
        row = self._rows.get(user_id)
        return () if row is None else tuple(self._histories[row])

    def history_of_row(self, row: int) -> Sequence[HistoryEntry]:
        return self._histories[row]

    def consumed_of_row(self, row: int) -> set[int]:
        return self._consumed[row]

    def consumed(self, user_id: str) -> set[int]:
        row = self._rows.get(user_id)
        return set() if row is None else self._consumed[row]


def _grow(t: Tensor, n: int) -> Tensor:
    out = torch.zeros((n, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out
