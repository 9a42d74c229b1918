"""The catalog as the model sees it: item ids mapped to rows of a frozen embedding matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from learner.exceptions import UnknownItemError
from learner.fusion import ItemImages

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

    With ``image_dim`` it also holds each item's frozen image embedding, zero (and not
    ``present``) for items without an image:

    >>> table = ItemTable(dim=2, image_dim=3)
    >>> _ = table.upsert(["a", "b"], torch.eye(2), torch.ones(2, 3), torch.tensor([True, False]))
    >>> table.image_view().present[:2].tolist(), table.image_view().vectors[1].tolist()
    ([True, False], [0.0, 0.0, 0.0])
    """

    def __init__(
        self,
        dim: int,
        *,
        device: torch.device | str = "cpu",
        capacity: int = 1024,
        image_dim: int = 0,
    ):
        self.dim = dim
        self.image_dim = image_dim
        self.device = torch.device(device)
        self.embeddings = torch.zeros((capacity, dim), device=self.device)
        # Image embeddings (image_dim 0: no image side at all) and which rows have one.
        rows = capacity if image_dim else 0
        self.images = torch.zeros((rows, image_dim), device=self.device)
        self.has_image = torch.zeros(rows, dtype=torch.bool, device=self.device)
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

    def image_view(self) -> ItemImages | None:
        """The image embeddings and their presence, or None when the table has no image side."""
        if not self.image_dim:
            return None
        return ItemImages(self.images, self.has_image)

    def upsert(
        self,
        item_ids: Sequence[str],
        embeddings: Tensor,
        images: Tensor | None = None,
        has_image: Tensor | None = None,
    ) -> Tensor:
        """Add new items or replace the embeddings of known ones; returns their rows.

        ``images`` ``(n, image_dim)`` and ``has_image`` ``(n,)`` replace the image side of these
        rows (a table with ``image_dim`` and no ``images`` given marks them image-less).
        """
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
            if self.image_dim:
                present = (
                    torch.zeros(len(rows), dtype=torch.bool, device=self.device)
                    if has_image is None
                    else has_image.to(self.device, torch.bool)
                )
                vecs = (
                    torch.zeros((len(rows), self.image_dim), device=self.device)
                    if images is None
                    else images.to(self.device, torch.float32)
                )
                self.images[idx] = vecs * present.unsqueeze(-1)
                self.has_image[idx] = present
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
        if self.image_dim:
            images = torch.zeros((new_cap, self.image_dim), device=self.device)
            images[: self.capacity] = self.images
            has_image = torch.zeros(new_cap, dtype=torch.bool, device=self.device)
            has_image[: self.capacity] = self.has_image
            self.images, self.has_image = images, has_image
        self.embeddings, self.active, self.row_version = grown, active, row_version
