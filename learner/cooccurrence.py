"""Item-to-item co-occurrence kept as a bounded top-M neighbour list per item.

When a user touches item ``i``, ``i`` co-occurs with each item ``j`` of that user's recent
history (weighted by both events' weights). Each item keeps at most ``M`` neighbours in two
``(items, M)`` tensors; when a row is full, a new neighbour takes the weakest slot with that
slot's weight plus its own (the space-saving sketch), so frequent pairs are never lost and memory
is ``O(items x M)`` however many pairs there are. Each row's neighbours are kept sorted by
item row (empty slots, ``-1``, first), so looking a pair up is a binary search. Similarity is
cosine over co-occurrence: ``C_ij / sqrt(n_i n_j)`` with ``n`` the item's total event weight.

For catalogs of at most ``dense_max_items`` rows the lists are mirrored in a dense
``(items, items)`` matrix, refreshed row by row as rows change: a batch of users' scores is
then one sparse-by-dense product (history entries times neighbour rows) instead of a scatter
of every (history item, neighbour) pair, which at 20 history items and full 1024-neighbour
rows is millions of writes per batch.
"""

from __future__ import annotations

import numpy as np
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
        self,
        *,
        max_neighbours: int = 200,
        device: torch.device | str = "cpu",
        capacity: int = 1024,
        dense_max_items: int = 4096,
    ) -> None:
        self.m = max_neighbours
        self.device = torch.device(device)
        self.idx = torch.full((capacity, self.m), -1, dtype=torch.long, device=self.device)
        self.weight = torch.zeros((capacity, self.m), device=self.device)
        self.mass = torch.zeros(capacity, device=self.device)  # n_i: total event weight of i
        # The dense mirror of the lists (C[i, j] = the weight of j in i's list), for small
        # catalogs only (4096 rows: 64 MiB), and the rows changed since it was last refreshed.
        self.dense_max_items = dense_max_items
        self._dense: Tensor | None = None
        self._changed: list[Tensor] = []

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
        item_row = torch.full_like(history, item)
        self._add_pairs(torch.cat([history, item_row]), torch.cat([item_row, history]), w.repeat(2))

    def observe_many(
        self, items: list[int], item_weights: list[float], histories: list[list[tuple[int, float]]]
    ) -> None:
        """A batch of events at once: ``items[e]`` co-occurs with each (row, weight) of
        ``histories[e]``. Pairs are summed first, then each touched row is updated once, so a
        batch costs one small update per distinct item rather than several per event.
        (:meth:`observe_batch` with the histories as lists.)
        """
        width = max((len(h) for h in histories), default=0)
        rows = np.full((len(items), width), -1, dtype=np.int64)
        weights = np.zeros((len(items), width), dtype=np.float64)
        for e, history in enumerate(histories):
            for j, (row, w) in enumerate(history):
                rows[e, j], weights[e, j] = row, w
        self.observe_batch(
            np.asarray(items, dtype=np.int64), np.asarray(item_weights), rows, weights
        )

    def observe_batch(
        self,
        items: np.ndarray,
        item_weights: np.ndarray,
        histories: np.ndarray,
        history_weights: np.ndarray,
    ) -> None:
        """:meth:`observe_many` with each event's history as a row of ``histories`` (``(E, H)``
        item rows, ``-1`` for none) and ``history_weights``; the pairs are found and summed
        with array operations, with no Python loop over events.

        Examples
        --------
        >>> co = CoOccurrence(max_neighbours=4)
        >>> co.observe_batch(np.array([0, 1]), np.array([1.0, 1.0]),
        ...                  np.array([[-1], [0]]), np.array([[0.0], [2.0]]))
        >>> co.similarity(torch.tensor([0]), torch.tensor([1])).tolist()
        [[2.0]]
        """
        if not len(items):
            return
        items = np.asarray(items, dtype=np.int64)
        top = int(max(items.max(), histories.max(initial=-1)))
        self._ensure_capacity(top + 1)
        dev = self.device
        self.mass.index_add_(
            0,
            torch.from_numpy(items).to(dev),
            torch.from_numpy(np.asarray(item_weights, dtype=np.float32)).to(dev),
        )
        item_of = np.broadcast_to(items[:, None], histories.shape)
        keep = (histories >= 0) & (histories != item_of)
        if not keep.any():
            return
        r, c = histories[keep], item_of[keep]
        w = (history_weights * np.asarray(item_weights, dtype=np.float64)[:, None])[keep]
        # Both directions of every pair, summed over the batch (one entry per distinct pair).
        span = top + 1
        keys, where = np.unique(np.concatenate([r * span + c, c * span + r]), return_inverse=True)
        sums = np.bincount(where.reshape(-1), weights=np.concatenate([w, w]))
        self._add_pairs(
            torch.from_numpy(keys // span).to(dev),
            torch.from_numpy(keys % span).to(dev),
            torch.from_numpy(sums.astype(np.float32)).to(dev),
        )

    def _add_pairs(self, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        """:meth:`_update_pairs`, remembering which rows changed (for the dense mirror)."""
        self._update_pairs(rows, cols, w)
        if self._dense is not None:
            self._changed.append(rows)

    def _dense_matrix(self) -> Tensor | None:
        """The dense mirror of the neighbour lists, refreshed where rows changed; None for
        catalogs larger than ``dense_max_items``."""
        cap = self.idx.shape[0]
        if cap > self.dense_max_items:
            self._dense, self._changed = None, []
            return None
        if self._dense is None or self._dense.shape[0] != cap:
            self._dense = torch.zeros((cap, cap), device=self.device)
            rows = torch.arange(cap, device=self.device)
        elif self._changed:
            rows = torch.unique(torch.cat(self._changed))
        else:
            return self._dense
        self._changed = []
        # Empty slots (-1) carry weight 0: adding them to column 0 changes nothing.
        fresh = torch.zeros((rows.numel(), cap), device=self.device)
        fresh.scatter_add_(1, self.idx[rows].clamp(min=0), self.weight[rows])
        self._dense[rows] = fresh
        return self._dense

    def _update_pairs(self, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        """Add ``w[p]`` to each pair (rows[p], cols[p]) (pairs distinct), all rows at once.

        A pair already listed adds to its slot. The new pairs of a row, heaviest first, take
        that row's weakest slots (empty ones first) that no listed pair of this batch uses,
        adding to the weight there: the space-saving sketch, as one row at a time would.

        Each row's neighbours are kept sorted by item row (empty slots first), so finding the
        listed pairs is one binary search over the touched rows, not a scan of every slot.
        """
        m, dev = self.m, self.device
        urows, inv = torch.unique(rows, return_inverse=True)
        listed = self.idx[urows]  # (U, M), ascending (empty slots, -1, first)
        span = max(self.idx.shape[0], int(cols.max()) + 1) + 1
        keys = listed + (torch.arange(urows.numel(), device=dev) * span).unsqueeze(-1)
        flat = keys.reshape(-1)
        query = inv * span + cols
        at = torch.searchsorted(flat, query).clamp(max=flat.numel() - 1)
        found = flat[at] == query
        slot = at - inv * m
        self.weight.index_put_((rows[found], slot[found]), w[found], accumulate=True)
        new = ~found
        if not bool(new.any()):
            return
        inv_new, c_new, w_new = inv[new], cols[new], w[new]
        free = self.weight[urows]  # (U, M), a copy
        free[inv[found], slot[found]] = float("inf")  # slots listed pairs of this batch use
        protected = torch.bincount(inv[found], minlength=urows.numel())
        # Rank each new pair within its row, heaviest first.
        by_weight = torch.argsort(w_new, descending=True, stable=True)
        order = by_weight[torch.argsort(inv_new[by_weight], stable=True)]
        inv_sorted = inv_new[order]
        counts = torch.bincount(inv_sorted, minlength=urows.numel())
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=dev) - starts[inv_sorted]
        keep = rank < (m - protected)[inv_sorted]
        order, inv_sorted, rank = order[keep], inv_sorted[keep], rank[keep]
        if order.numel() == 0:
            return
        changed = torch.unique(inv_sorted)
        sub = torch.zeros(urows.numel(), dtype=torch.long, device=dev)
        sub[changed] = torch.arange(changed.numel(), device=dev)
        need = min(int(rank.max()) + 1, m)
        weakest = torch.topk(free[changed], need, dim=-1, largest=False, sorted=True).indices
        slots = weakest[sub[inv_sorted], rank]
        target = urows[inv_sorted]
        self.idx[target, slots] = c_new[order]
        self.weight[target, slots] += w_new[order]
        self._sort_rows(urows[changed])

    def _sort_rows(self, rows: Tensor) -> None:
        """Re-sort ``rows``' neighbours by item row (empty slots, -1, first), weights alongside."""
        idx = self.idx[rows]
        order = torch.argsort(idx, dim=-1)
        self.idx[rows] = idx.gather(1, order)
        self.weight[rows] = self.weight[rows].gather(1, order)

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

    def scores_many(self, history: Tensor, history_weights: Tensor, num_rows: int) -> Tensor:
        """:meth:`scores` for a batch of users at once: ``history`` is ``(B, H)`` item rows
        padded with ``-1`` (weight 0), the result ``(B, num_rows)``.

        Examples
        --------
        >>> co = CoOccurrence(max_neighbours=4)
        >>> co.observe(item=0, item_weight=1.0, history=torch.tensor([], dtype=torch.long),
        ...            history_weights=torch.ones(0))
        >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([0]),
        ...            history_weights=torch.ones(1))
        >>> co.scores_many(torch.tensor([[-1, 0], [-1, -1]]), torch.tensor([[0.0, 1.0],
        ...                [0.0, 0.0]]), num_rows=3).tolist()
        [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
        """
        b = history.shape[0]
        out = torch.zeros((b, num_rows), device=self.device)
        self.add_scores(out, history, history_weights, torch.ones(b, device=self.device))
        return out

    def add_scores(
        self, out: Tensor, history: Tensor, history_weights: Tensor, scale: Tensor
    ) -> None:
        """``out[u] += scale[u] * scores_many(...)[u]`` in place, for ``out`` of shape
        ``(B, num_rows)``: the head adds its weighted co-occurrence signal to the scores it
        already has without a ``(B, num_rows)`` signal tensor of its own."""
        b, num_rows = out.shape
        self._ensure_capacity(num_rows)
        if history.numel() == 0:
            return
        present = history >= 0
        a = history_weights * present
        flat = present.reshape(-1).nonzero().squeeze(-1)  # only real history entries
        rows = history.reshape(-1)[flat]
        user = flat // history.shape[1]
        # sim(j, v) = C_jv / sqrt(n_j n_v): scale by 1/sqrt(n_j) per entry, by 1/sqrt(n_v) after;
        # the user's weight and 1 / Σ a_j go into each entry too.
        per_user = scale / a.sum(dim=1).clamp(min=1e-9)
        entry = a.reshape(-1)[flat] / self.mass[rows].sqrt().clamp(min=1e-9) * per_user[user]
        mass = self.mass[:num_rows]
        inv_norm = torch.where(mass > 0, 1.0 / mass.sqrt().clamp(min=1e-9), 0.0)
        dense = self._dense_matrix()
        if dense is not None:  # (users x items, one entry per history item) @ (items x items)
            entries = torch.sparse_coo_tensor(
                torch.stack([user, rows]), entry, (b, dense.shape[0]), check_invariants=False
            ).coalesce()
            out.addcmul_(torch.sparse.mm(entries, dense)[:, :num_rows], inv_norm)
            return
        nbr = self.idx[rows]  # (P, M); empty slots are -1 with weight 0
        target = nbr.clamp(min=0) + (user * num_rows).unsqueeze(-1)
        raw = torch.zeros(b * num_rows, device=self.device)
        raw.index_add_(0, target.reshape(-1), (self.weight[rows] * entry.unsqueeze(-1)).reshape(-1))
        out.addcmul_(raw.view(b, num_rows), inv_norm)

    def scores_at(self, history: Tensor, history_weights: Tensor, cols: Tensor) -> Tensor:
        """:meth:`scores_many` at each user's own columns only: ``history`` ``(B, H)`` item
        rows (``-1`` padded), ``cols`` ``(B, C)``; the result is ``(B, C)``. It costs a binary
        search per (history item, column) instead of a pass over the catalog per user.

        Examples
        --------
        >>> co = CoOccurrence(max_neighbours=4)
        >>> co.observe(item=0, item_weight=1.0, history=torch.tensor([], dtype=torch.long),
        ...            history_weights=torch.ones(0))
        >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([0]),
        ...            history_weights=torch.ones(1))
        >>> co.scores_at(torch.tensor([[-1, 0]]), torch.tensor([[0.0, 1.0]]),
        ...              torch.tensor([[1, 2]])).tolist()
        [[1.0, 0.0]]
        """
        a = history_weights * (history >= 0)
        sim = self.similarity_many(history, cols)  # (B, H, C)
        return torch.bmm(a.unsqueeze(1), sim).squeeze(1) / a.sum(dim=1, keepdim=True).clamp(
            min=1e-9
        )

    def similarity_many(self, rows: Tensor, cols: Tensor) -> Tensor:
        """``sim(rows[b, h], cols[b, k])`` as a ``(B, H, K)`` tensor for a batch: each user's
        history rows (``-1`` padded, giving 0) against that user's own candidate columns.

        One binary search per (history row, column) in the row's sorted neighbour list.

        Examples
        --------
        >>> co = CoOccurrence(max_neighbours=4)
        >>> co.observe(item=0, item_weight=1.0, history=torch.tensor([], dtype=torch.long),
        ...            history_weights=torch.ones(0))
        >>> co.observe(item=1, item_weight=1.0, history=torch.tensor([0]),
        ...            history_weights=torch.ones(1))
        >>> co.similarity_many(torch.tensor([[-1, 0]]), torch.tensor([[1, 2]])).tolist()
        [[[0.0, 0.0], [1.0, 0.0]]]
        """
        b, h = rows.shape
        k = cols.shape[1]
        if rows.numel() == 0 or k == 0:
            return torch.zeros((b, h, k), device=self.device)
        self._ensure_capacity(int(max(rows.max(), cols.max())) + 1)
        out = torch.zeros(b * h, k, device=self.device)
        flat = (rows >= 0).reshape(-1).nonzero().squeeze(-1)  # only real history entries
        r = rows.reshape(-1)[flat]
        seq = self.idx[r]  # (P, M), ascending (empty slots, -1, first)
        query = cols[flat // h]  # (P, K): each entry's user's columns
        at = torch.searchsorted(seq, query).clamp(max=self.m - 1)
        found = seq.gather(1, at) == query
        weight = self.weight.view(-1)[r.unsqueeze(-1) * self.m + at] * found
        norm = torch.sqrt(self.mass[r].unsqueeze(-1) * self.mass[query]).clamp(min=1e-9)
        out[flat] = weight / norm
        return out.view(b, h, k)

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
