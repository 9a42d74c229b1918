"""Item-to-item co-occurrence kept as a bounded top-M neighbour list per item.

When a user touches item ``i``, ``i`` co-occurs with each item ``j`` of that user's recent
history (weighted by both events' weights). Each item keeps at most ``M`` neighbours in two
``(items, M)`` tensors; when a row is full, a new neighbour takes the weakest slot with that
slot's weight plus its own (the space-saving sketch), so frequent pairs are never lost and memory
is ``O(items x M)`` however many pairs there are. Similarity is cosine over co-occurrence:
``C_ij / sqrt(n_i n_j)`` with ``n`` the item's total event weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CoOccurrence"]


class CoOccurrence:
    """Bounded co-occurrence neighbour lists and the user-to-item score they give.

    Examples
    --------
    >>> co = CoOccurrence(max_neighbours=4)
    >>> one = torch.ones(1)
    >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([0]), history_weights=one)
    >>> co.observe(item=2, item_weight=1.0, history=torch.tensor([0]), history_weights=one)
    >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([3]), history_weights=one)
    >>> s = co.scores(torch.tensor([0]), torch.ones(1), num_rows=4)
    >>> s.argmax().item(), round(float(s[3]), 3)
    (1, 0.0)
    """

    def __init__(
        self, *, max_neighbours: int = 200, device: torch.device | str = "cpu", capacity: int = 1024
    ) -> None:
        self.m = max_neighbours
        self.device = torch.device(device)
        self.idx = torch.full((capacity, self.m), -1, dtype=torch.long, device=self.device)
        self.weight = torch.zeros((capacity, self.m), device=self.device)
        self.mass = torch.zeros(capacity, device=self.device)  # n_i: total event weight of i

    def _ensure_capacity(self, n: int) -> None:
        cap = self.idx.shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        idx = torch.full((new_cap, self.m), -1, dtype=torch.long, device=self.device)
        idx[:cap] = self.idx
        weight = torch.zeros((new_cap, self.m), device=self.device)
        weight[:cap] = self.weight
        mass = torch.zeros(new_cap, device=self.device)
        mass[:cap] = self.mass
        self.idx, self.weight, self.mass = idx, weight, mass

    def _add(self, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        """Add weight ``w[k]`` to the pair (rows[k], cols[k]); rows must be distinct."""
        idx = self.idx[rows]  # (R, M)
        match = idx == cols.unsqueeze(-1)
        found = match.any(dim=-1)
        slot = torch.where(
            found,
            match.float().argmax(dim=-1),
            # not present: an empty slot (weight 0) or else the weakest one
            self.weight[rows].argmin(dim=-1),
        )
        self.idx[rows, slot] = cols
        self.weight[rows, slot] += w

    def observe(
        self, *, item: int, item_weight: float, history: Tensor, history_weights: Tensor
    ) -> None:
        """One event: ``item`` co-occurs with each item of the user's ``history``."""
        top = item if history.numel() == 0 else max(item, int(history.max()))
        self._ensure_capacity(top + 1)
        self.mass[item] += item_weight
        keep = history != item
        history, history_weights = history[keep], history_weights[keep]
        if history.numel() == 0:
            return
        history, inverse = torch.unique(history, return_inverse=True)
        w = torch.zeros(history.shape[0], device=self.device)
        w.index_add_(0, inverse, history_weights.to(w.dtype) * item_weight)
        self._add(history, torch.full_like(history, item), w)
        self._add_row(item, history, w)

    def observe_many(
        self, items: list[int], item_weights: list[float], histories: list[list[tuple[int, float]]]
    ) -> None:
        """A batch of events at once: ``items[e]`` co-occurs with each (row, weight) of
        ``histories[e]``. Pairs are summed first, then each touched row is updated once, so a
        batch costs one small update per distinct item rather than several per event.
        """
        if not items:
            return
        top = max(items + [r for h in histories for r, _ in h])
        self._ensure_capacity(top + 1)
        acc: dict[int, dict[int, float]] = {}
        for item, w_item, history in zip(items, item_weights, histories, strict=True):
            for row, w_row in history:
                if row == item:
                    continue
                w = w_row * w_item
                to_item, to_row = acc.setdefault(row, {}), acc.setdefault(item, {})
                to_item[item] = to_item.get(item, 0.0) + w
                to_row[row] = to_row.get(row, 0.0) + w
        mass_rows = torch.tensor(items, dtype=torch.long, device=self.device)
        self.mass.index_add_(0, mass_rows, torch.tensor(item_weights, device=self.device))
        for row, cols in acc.items():
            self._add_row(
                row,
                torch.tensor(list(cols), dtype=torch.long, device=self.device),
                torch.tensor(list(cols.values()), device=self.device),
            )

    def _add_row(self, row: int, cols: Tensor, w: Tensor) -> None:
        """Add ``w`` to the pairs (row, cols[k]) of one row; cols are distinct."""
        idx, weight = self.idx[row], self.weight[row]
        match = idx.unsqueeze(0) == cols.unsqueeze(-1)  # (C, M)
        found = match.any(dim=-1)
        found_slots = match.float().argmax(dim=-1)[found]
        weight[found_slots] += w[found]
        new_cols, new_w = cols[~found], w[~found]
        if new_cols.numel():
            protected = torch.zeros(self.m, dtype=torch.bool, device=self.device)
            protected[found_slots] = True
            free = weight.masked_fill(protected, float("inf"))
            n = min(int(new_cols.numel()), self.m - int(found_slots.numel()))
            heaviest = torch.argsort(new_w, descending=True)[:n]
            slots = torch.argsort(free)[:n]  # the weakest slots (empty ones first)
            idx[slots] = new_cols[heaviest]
            weight[slots] += new_w[heaviest]

    def scores(self, history: Tensor, history_weights: Tensor, num_rows: int) -> Tensor:
        """``Σ_j a_j sim(j, v) / Σ_j a_j`` for every item row ``v`` (history items ``j``)."""
        self._ensure_capacity(num_rows)
        out = torch.zeros(num_rows, device=self.device)
        if history.numel() == 0:
            return out
        nbr = self.idx[history]  # (H, M)
        valid = nbr >= 0
        safe = nbr.clamp(min=0)
        norm = torch.sqrt(self.mass[history].unsqueeze(-1) * self.mass[safe]).clamp(min=1e-9)
        sim = torch.where(valid, self.weight[history] / norm, torch.zeros_like(norm))
        contrib = sim * history_weights.unsqueeze(-1)
        out.index_add_(0, safe.reshape(-1), contrib.reshape(-1))
        return out / history_weights.sum().clamp(min=1e-9)

    def similarity(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``sim(rows[a], cols[b])`` as an ``(len(rows), len(cols))`` matrix (0 if unknown).

        Examples
        --------
        >>> co = CoOccurrence(max_neighbours=4)
        >>> co.observe(item=0, item_weight=1.0, history=torch.tensor([], dtype=torch.long),
        ...            history_weights=torch.ones(0))
        >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([0]),
        ...            history_weights=torch.ones(1))
        >>> co.similarity(torch.tensor([0, 1]), torch.tensor([1, 2])).tolist()
        [[1.0, 0.0], [0.0, 0.0]]
        """
        self._ensure_capacity(int(max(rows.max(), cols.max())) + 1)
        nbr = self.idx[rows]  # (R, M)
        match = nbr.unsqueeze(1) == cols.view(1, -1, 1)  # (R, C, M)
        weight = (self.weight[rows].unsqueeze(1) * match).sum(-1)  # (R, C)
        norm = torch.sqrt(self.mass[rows].unsqueeze(-1) * self.mass[cols].unsqueeze(0))
        return weight / norm.clamp(min=1e-9)
