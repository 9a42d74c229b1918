"""Trending popularity: a time-decayed count per item, the cold-start fallback."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TrendingPopularity"]


class TrendingPopularity:
    """Counts that halve every ``half_life_s`` seconds of event time.

    Counts are kept relative to the newest event time seen, so one ``observe`` costs one
    multiply of the count vector and one ``index_add_``.

    Examples
    --------
    >>> pop = TrendingPopularity(half_life_s=3600.0)
    >>> pop.observe(torch.tensor([0, 0]), torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    >>> pop.observe(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([3_600_000]))
    >>> pop.scores(2)
    tensor([1., 1.])
    """

    def __init__(
        self, half_life_s: float, *, device: torch.device | str = "cpu", capacity: int = 1024
    ) -> None:
        self.half_life_s = half_life_s
        self.device = torch.device(device)
        self.counts = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        self.now_ms: int | None = None

    def observe(self, item_rows: Tensor, weights: Tensor, ts_ms: Tensor) -> None:
        """Count a batch of events (rows, weights, times in ms)."""
        if item_rows.numel() == 0:
            return
        self._ensure_capacity(int(item_rows.max()) + 1)
        ts = ts_ms.to(self.device, torch.int64)
        newest = int(ts.max())
        if self.now_ms is None:
            self.now_ms = newest
        if newest > self.now_ms:
            self.counts *= 2.0 ** (-(newest - self.now_ms) / 1000.0 / self.half_life_s)
            self.now_ms = newest
        age_s = (self.now_ms - ts).double() / 1000.0
        w = weights.to(self.device, torch.float64) * torch.exp2(-age_s / self.half_life_s)
        self.counts.index_add_(0, item_rows.to(self.device), w)

    def scores(self, num_rows: int) -> Tensor:
        """Current trending score of rows ``0..num_rows-1`` (float32)."""
        self._ensure_capacity(num_rows)
        return self.counts[:num_rows].float()

    def _ensure_capacity(self, n: int) -> None:
        cap = self.counts.shape[0]
        if n > cap:
            grown = torch.zeros(max(n, 2 * cap), dtype=torch.float64, device=self.device)
            grown[:cap] = self.counts
            self.counts = grown
