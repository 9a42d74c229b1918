"""Approximate top-K candidates over a large catalog: a FAISS inverted-file index of the head's
item vectors, kept in step with the item table and the head, for exact re-scoring.

The head's bilinear part of a score is an inner product once the bias is folded in:
``w_0 q_u·x_v + b_v = [w_0 q_u, 1]·[x_v, b_v]`` with ``x_v = e_v + δ_v``. :class:`ItemIndex`
answers "which rows have the largest inner product with this query" approximately (IVF: spherical
k-means lists, only the ``nprobe`` lists nearest the query are scanned). It only proposes
candidates; the recommender re-scores them exactly with the current head and signals, so an
index that is slightly behind the head costs recall, never wrong scores.

:class:`CatalogIndex` is the refresh policy. Before each search it brings the index up to date
with the rows that changed since the last one, which it finds without scanning the catalog:
rows the item table marks as changed (upserts, re-adds and deletes carry the table version that
touched them), new rows, and rows whose bias a head step moved (a step moves ``δ_v`` and ``b_v``
of the same rows). Every ``delta_check_steps`` head steps it also compares a fingerprint of all
``δ`` rows, so a change to ``δ`` alone is picked up too. Deleted rows leave the index; the
k-means lists are trained again only when the live catalog has grown or shrunk by
``rebuild_growth`` since they were. With image fusion the fingerprint is of ``e_v + δ_v``: a
step that moves the fusion's gate or projection moves every image item's vector, and the next
periodic check re-indexes them.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.nn.functional.normalize(torch.randn(500, 8, generator=g), dim=-1)
>>> index = ItemIndex.build(torch.arange(500), lambda rows: x[rows], AnnConfig(nlist=8, nprobe=8))
>>> len(index)
500
>>> found = index.search(x[:2], k=5)
>>> found[:, 0].tolist()  # each vector is its own best match when every list is scanned
[0, 1]
>>> index.remove(torch.tensor([0]))
>>> 0 in index.search(x[:1], k=5)[0].tolist()
False
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from learner.head import BilinearHead
    from learner.item_table import ItemTable

__all__ = [
    "AnnConfig",
    "CatalogIndex",
    "ItemIndex",
    "default_nlist",
    "mips_items",
    "mips_queries",
    "set_threads",
]

# Rows encoded and added per call while building, so a build never holds a second copy of the
# catalog's vectors.
_ADD_CHUNK = 65_536
# FAISS warns when k-means gets fewer training points per centroid than this.
_MIN_PER_LIST = 39


@dataclass(frozen=True)
class AnnConfig:
    """Settings of the approximate candidate index (see ``ModelConfig.ann_min_items``)."""

    # Inverted lists; 0: the power of two nearest sqrt(live items) (1024 at a million).
    nlist: int = 0
    # Lists scanned per query: the recall/speed dial.
    nprobe: int = 8
    # How the index stores vectors: "fp16" (half the memory of "flat" and faster to scan, with
    # no value range to train) or "flat" (float32). Candidates are re-scored exactly either way.
    storage: str = "fp16"
    # Candidates taken beyond k + the user's consumed items, from the index and from each
    # additive signal, before exact re-scoring.
    candidates: int = 40
    # k-means is trained on this many items per list (a sample), so a million items train in
    # seconds on two cores.
    train_per_list: int = 40
    # Train the lists again once the live catalog has grown (or shrunk) by this factor.
    rebuild_growth: float = 2.0
    # Compare a fingerprint of every δ row once per this many head steps (0: never).
    delta_check_steps: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.storage not in ("flat", "fp16"):
            raise ValueError(f"unknown ANN storage {self.storage!r} (flat, fp16)")


def mips_items(vectors: Tensor, bias: Tensor) -> Tensor:
    """Item side of the inner-product form of ``w q·x + b``: ``[x, b]``.

    Examples
    --------
    >>> mips_items(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]))
    tensor([[1.0000, 0.0000, 0.5000]])
    """
    return torch.cat([vectors, bias.unsqueeze(-1)], dim=-1)


def mips_queries(queries: Tensor, weight: Tensor) -> Tensor:
    """Query side: ``[w q, 1]``, so that ``mips_queries(q, w) @ mips_items(x, b).T = w q·x + b``.

    Examples
    --------
    >>> q, x, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]]), torch.tensor([0.5])
    >>> mips_queries(q, torch.tensor([2.0])) @ mips_items(x, b).T
    tensor([[10.5000]])
    """
    ones = torch.ones((queries.shape[0], 1), dtype=queries.dtype, device=queries.device)
    return torch.cat([weight.unsqueeze(-1) * queries, ones], dim=-1)


def default_nlist(live_items: int) -> int:
    """The power of two nearest ``sqrt(live_items)``, at least 1.

    Examples
    --------
    >>> default_nlist(10_000), default_nlist(100_000), default_nlist(1_000_000)
    (128, 256, 1024)
    """
    return 1 << max(0, round(math.log2(max(1.0, math.sqrt(live_items)))))


def _faiss() -> Any:
    """FAISS, imported on first use: the learner runs without it (the GPU machine has none)
    as long as the catalog stays below ``ann_min_items``."""
    import faiss

    return faiss


def set_threads(n: int) -> None:
    """Threads FAISS searches and builds with (its OpenMP pool is process-wide)."""
    _faiss().omp_set_num_threads(n)


def _np32(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _np64(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.int64).numpy())


class ItemIndex:
    """Approximate maximum-inner-product search over item rows (FAISS inverted lists).

    Row numbers are the index's ids, so a row can be removed or replaced on its own.
    """

    def __init__(self, dim: int, nlist: int, config: AnnConfig) -> None:
        self.dim = dim
        # FAISS's SIMD kernels want a width divisible by 16 (385 = 384 + bias would fall back to
        # scalar code, 3x slower); zero columns change no inner product.
        self._width = -(-dim // 16) * 16
        self.nlist = nlist
        self.config = config
        width = self._width
        self._quantizer = _faiss().IndexFlatIP(width)
        ip = _faiss().METRIC_INNER_PRODUCT
        self._index: Any
        if config.storage == "flat":
            self._index = _faiss().IndexIVFFlat(self._quantizer, width, nlist, ip)
        else:
            fp16 = _faiss().ScalarQuantizer.QT_fp16
            self._index = _faiss().IndexIVFScalarQuantizer(
                self._quantizer, width, nlist, fp16, ip, False
            )
        # Spherical k-means: unit-norm centroids, so no list wins a query by its norm alone
        # (plain k-means under inner product cut recall@10 from 0.98 to 0.8 on clustered data).
        self._index.cp.spherical = True
        self._index.cp.seed = config.seed
        # A hash table from id to list entry makes removing a row cost O(1), not a full scan.
        self._index.set_direct_map_type(_faiss().DirectMap.Hashtable)
        self._index.nprobe = min(config.nprobe, nlist)
        self.trained_size = 0

    @classmethod
    def build(
        cls, rows: Tensor, vectors_of: Callable[[Tensor], Tensor], config: AnnConfig
    ) -> ItemIndex:
        """Train on a seeded sample of ``rows`` and add them all; ``vectors_of(rows)`` gives
        their vectors (asked for in chunks, never all at once)."""
        rows = rows.to("cpu", torch.int64)
        nlist = config.nlist or default_nlist(int(rows.numel()))
        # k-means wants a few dozen points per centroid; tiny catalogs get fewer, larger lists.
        nlist = max(1, min(nlist, int(rows.numel()) // _MIN_PER_LIST))
        probe = vectors_of(rows[:1])
        index = cls(int(probe.shape[-1]), nlist, config)
        generator = torch.Generator().manual_seed(config.seed)
        n_train = min(int(rows.numel()), max(nlist, nlist * config.train_per_list))
        sample = rows[torch.randperm(int(rows.numel()), generator=generator)[:n_train]]
        index._index.train(index._np(vectors_of(sample)))
        index.trained_size = int(rows.numel())
        for start in range(0, int(rows.numel()), _ADD_CHUNK):
            chunk = rows[start : start + _ADD_CHUNK]
            index.add(chunk, vectors_of(chunk))
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def _np(self, vectors: Tensor) -> np.ndarray:
        """``vectors`` as the float32 array FAISS takes, zero-padded to the stored width."""
        pad = self._width - int(vectors.shape[-1])
        if pad:
            vectors = torch.nn.functional.pad(vectors, (0, pad))
        return _np32(vectors)

    def add(self, rows: Tensor, vectors: Tensor) -> None:
        """Add rows that are not in the index."""
        if rows.numel():
            self._index.add_with_ids(self._np(vectors), _np64(rows))

    def remove(self, rows: Tensor) -> None:
        """Remove rows (absent ones are ignored)."""
        if rows.numel():
            ids = _np64(rows)  # the selector points into this array; keep it alive
            self._index.remove_ids(_faiss().IDSelectorArray(ids))

    def search(self, queries: Tensor, k: int) -> Tensor:
        """Up to ``k`` rows per query, best first, as a ``(queries, k)`` long tensor on the CPU
        padded with ``-1`` where the scanned lists hold fewer than ``k`` rows."""
        if queries.shape[0] == 0 or k <= 0:
            return torch.full((queries.shape[0], max(k, 0)), -1, dtype=torch.long)
        _, found = self._index.search(self._np(queries), k)
        return torch.from_numpy(found)


class CatalogIndex:
    """An :class:`ItemIndex` over the live rows of an item table, refreshed from the table and
    the head before each search (see the module docstring for the policy)."""

    def __init__(self, config: AnnConfig) -> None:
        self.config = config
        self.index: ItemIndex | None = None
        self.builds = 0  # k-means trainings so far
        self.refreshed_rows = 0  # rows re-indexed by incremental refreshes so far
        self._version = -1  # item table version the index reflects
        self._rows = 0  # table rows the index has seen
        self._bias = torch.zeros(0)  # the bias of each seen row when it was indexed
        self._indexed = torch.zeros(0, dtype=torch.bool)  # which seen rows are in the index
        self._fingerprint = torch.zeros(0)
        self._probe: Tensor | None = None
        self._checked_steps = 0

    def __getstate__(self) -> dict[str, object]:
        """Pickles (and copies) without the FAISS index, which is built again on first use."""
        return {"config": self.config}

    def __setstate__(self, state: dict[str, object]) -> None:
        config = state["config"]
        assert isinstance(config, AnnConfig)
        self.__dict__.update(CatalogIndex(config).__dict__)

    def sync(self, table: ItemTable, head: BilinearHead) -> None:
        """Bring the index up to date with ``table`` and ``head``."""
        n = table.num_rows
        live = table.active[:n].cpu()
        n_live = int(live.sum())
        head.ensure_capacity(n)

        images = table.image_view()

        def vectors_of(rows: Tensor) -> Tensor:
            r = rows.to(table.device)
            with torch.no_grad():
                x = head.vectors_at(table.embeddings, r, images)
            return mips_items(x, head.bias[r]).cpu()

        growth = self.config.rebuild_growth
        if (
            self.index is None
            or n_live > growth * self.index.trained_size
            or n_live * growth < self.index.trained_size
        ):
            rows = torch.nonzero(live).squeeze(-1)
            self.index = ItemIndex.build(rows, vectors_of, self.config) if n_live else None
            self.builds += 1
            self._version, self._rows = table.version, n
            self._bias = head.bias[:n].cpu().clone()
            self._indexed = live.clone()
            self._fingerprint = self._delta_fingerprint(head, n, table=table)
            self._checked_steps = head.steps
            return
        parts = [torch.arange(self._rows, n)]
        if table.version != self._version:
            parts.append(table.rows_changed_since(self._version).cpu())
        seen = self._rows
        parts.append(torch.nonzero(head.bias[:seen].cpu() != self._bias[:seen]).squeeze(-1))
        if self.config.delta_check_steps and (
            head.steps - self._checked_steps >= self.config.delta_check_steps
        ):
            fingerprint = self._delta_fingerprint(head, n, table=table)
            moved = (fingerprint[:seen] - self._fingerprint[:seen]).abs() > 1e-6 * (
                1.0 + self._fingerprint[:seen].abs()
            )
            parts.append(torch.nonzero(moved).squeeze(-1))
            self._fingerprint, self._checked_steps = fingerprint, head.steps
        changed = torch.unique(torch.cat(parts))
        self._version, self._rows = table.version, n
        if self._bias.numel() < n:
            self._bias = torch.cat([self._bias, torch.zeros(n - self._bias.numel())])
            self._indexed = torch.cat(
                [self._indexed, torch.zeros(n - self._indexed.numel(), dtype=torch.bool)]
            )
        if self._fingerprint.numel() < n:
            grown = torch.zeros(n)
            grown[: self._fingerprint.numel()] = self._fingerprint
            self._fingerprint = grown
        if changed.numel() == 0:
            return
        self._fingerprint[changed] = self._delta_fingerprint(head, n, changed, table=table)
        self.index.remove(changed[self._indexed[changed]])
        add = changed[live[changed]]
        self.index.add(add, vectors_of(add))
        self._indexed[changed] = live[changed]
        self._bias[changed] = head.bias[changed.to(head.bias.device)].cpu()
        self.refreshed_rows += int(changed.numel())

    def search(self, queries: Tensor, k: int) -> Tensor:
        """``(queries, k)`` candidate rows (``-1`` padded); see :meth:`ItemIndex.search`."""
        if self.index is None:
            return torch.full((queries.shape[0], k), -1, dtype=torch.long)
        return self.index.search(queries, k)

    def _delta_fingerprint(
        self,
        head: BilinearHead,
        n: int,
        rows: Tensor | None = None,
        *,
        table: ItemTable | None = None,
    ) -> Tensor:
        """One number per row (rows ``0..n-1``, or ``rows``), ``δ_v · r`` for a fixed random
        ``r``: it moves when ``δ_v`` does. With image fusion it is ``(e_v + δ_v) · r``, which
        also moves when the fusion's parameters move the image items' content vectors."""
        if self._probe is None or self._probe.numel() != head.dim:
            g = torch.Generator().manual_seed(self.config.seed + 1)
            self._probe = torch.randn(head.dim, generator=g)
        if head.fusion is not None and table is not None:
            r = torch.arange(n) if rows is None else rows
            with torch.no_grad():
                x = head.vectors_at(table.embeddings, r.to(table.device), table.image_view())
            return (x @ self._probe.to(x.device)).cpu()
        delta = head.delta[:n] if rows is None else head.delta[rows.to(head.delta.device)]
        return (delta @ self._probe.to(delta.device)).cpu()
