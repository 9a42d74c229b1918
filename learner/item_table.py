"""The catalog as the model sees it: item ids mapped to rows of a frozen embedding matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from learner.exceptions import UnknownItemError

__all__ = ["ItemTable"]


class ItemTable:
    """Item ids, their frozen content embeddings ``e_v`` and which rows are live.

    A deleted item keeps its row (marked inactive), so that learned parameters indexed by row
    stay aligned and a re-added item gets its old row back.

    Examples
    --------
    >>> table = ItemTable(dim=2)
    >>> table.upsert(["a", "b"], torch.eye(2))
    tensor([0, 1])
    >>> table.delete(["a"]), table.num_active
    (1, 1)
    >>> table.row_of("b"), table.ids[1], "a" in table
    (1, 'b', False)
    """

    def __init__(self, dim: int, *, device: torch.device | str = "cpu", capacity: int = 1024):
        self.dim = dim
        self.device = torch.device(device)
        self.embeddings = torch.zeros((capacity, dim), device=self.device)
        self.active = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}
        self.version = 0  # bumped on every change, so callers can cache derived tensors
        # The version that last changed each row, so derived indexes can refresh only those.
        self.row_version = torch.zeros(capacity, dtype=torch.int64, device=self.device)

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def num_active(self) -> int:
        return int(self.active[: self.num_rows].sum())

    def __contains__(self, item_id: object) -> bool:
        row = self._rows.get(item_id)  # type: ignore[call-overload]
        return row is not None and bool(self.active[row])

    def __len__(self) -> int:
        return self.num_active

    def row_of(self, item_id: str) -> int:
        """The row of a live item; :class:`UnknownItemError` for unknown or deleted ones."""
        row = self._rows.get(item_id)
        if row is None or not bool(self.active[row]):
            raise UnknownItemError(item_id)
        return row

    def find(self, item_id: str) -> int | None:
        """The row of a live item, or None."""
        row = self._rows.get(item_id)
        return row if row is not None and bool(self.active[row]) else None

    def row_any(self, item_id: str) -> int | None:
        """The row of an item live or deleted (rows are never reused), or None if never seen."""
        return self._rows.get(item_id)

    def upsert(self, item_ids: Sequence[str], embeddings: Tensor) -> Tensor:
        """Add new items or replace the embeddings of known ones; returns their rows."""
        rows = []
        for item_id in item_ids:
            row = self._rows.get(item_id)
            if row is None:
                row = len(self.ids)
                self._rows[item_id] = row
                self.ids.append(item_id)
            rows.append(row)
        self._ensure_capacity(len(self.ids))
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        if rows:
            self.embeddings[idx] = embeddings.to(self.device, torch.float32)
            self.active[idx] = True
            self.version += 1
            self.row_version[idx] = self.version
        return idx

    def delete(self, item_ids: Sequence[str]) -> int:
        """Mark items inactive; returns how many live items were removed."""
        removed: list[int] = []
        for item_id in item_ids:
            row = self._rows.get(item_id)
            if row is not None and bool(self.active[row]):
                self.active[row] = False
                removed.append(row)
        if removed:
            self.version += 1
            self.row_version[torch.tensor(removed, device=self.device)] = self.version
        return len(removed)

    def rows_changed_since(self, version: int) -> Tensor:
        """Rows added, updated or deleted after table version ``version``.

        Examples
        --------
        >>> table = ItemTable(dim=2)
        >>> _ = table.upsert(["a", "b"], torch.eye(2))
        >>> v = table.version
        >>> _ = table.upsert(["c"], torch.ones(1, 2)), table.delete(["a"])
        >>> table.rows_changed_since(v).tolist()
        [0, 2]
        """
        return torch.nonzero(self.row_version[: self.num_rows] > version).squeeze(-1)

    def _ensure_capacity(self, n: int) -> None:
        if n <= self.capacity:
            return
        new_cap = max(n, 2 * self.capacity)
        grown = torch.zeros((new_cap, self.dim), device=self.device)
        grown[: self.capacity] = self.embeddings
        active = torch.zeros(new_cap, dtype=torch.bool, device=self.device)
        active[: self.capacity] = self.active
        row_version = torch.zeros(new_cap, dtype=torch.int64, device=self.device)
        row_version[: self.capacity] = self.row_version
        self.embeddings, self.active, self.row_version = grown, active, row_version
