"""Per-user state: a time-decayed, event-weighted sum of item vectors plus a bounded history.

A user's vector ``h_u`` is kept un-normalised together with the time of its newest event, so
that folding an event in is O(d): decay ``h_u`` to the event's time and add the weighted item
vector. A whole micro-batch folds in with one ``index_add_``.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EventWeights",
    "HistoryEntry",
    "UserSnapshot",
    "UserStateStore",
    "decay",
    "event_id_hash",
]

# History times are kept as int32 seconds since 2000-01-01 (good from 1932 to 2068).
_EPOCH_S = 946_684_800


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


def event_id_hash(event_id: str) -> int:
    """A stable, non-zero 64-bit signed hash of an event id (0 marks an empty dedup slot).

    Examples
    --------
    >>> event_id_hash("e1") == event_id_hash("e1") != event_id_hash("e2")
    True
    """
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


@dataclass(frozen=True)
class UserSnapshot:
    """One user's whole state, free of this process's item rows: what the changelog carries.

    ``history`` is ``(item_id, weight, ts_ms)`` oldest first; ``consumed`` the older consumed
    item ids that left the history; ``seen`` the hashes of the ids of the user's last events
    (oldest first) that make a re-delivered event a no-op; ``encoder`` the name of the encoder
    whose embedding space ``vector`` lives in ("" where unknown: a record from before it was
    kept); ``ranked`` the head of the list last ranked for the user (item ids, best first),
    where the learner draws the user's hard negatives from (empty where none was kept).
    """

    user_id: str
    vector: bytes  # the un-normalised vector, float32 little-endian
    last_ts_ms: int
    count: int
    history: tuple[tuple[str, float, int], ...]
    consumed: tuple[str, ...] = ()
    seen: tuple[int, ...] = ()
    encoder: str = ""
    ranked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One remembered interaction: which item row, with what weight, when."""

    item_row: int
    weight: float
    ts_ms: int


class UserStateStore:
    """All users' state in flat arrays: vectors, newest times, counts and history rings.

    Per user: the decayed vector (``dim`` floats), the newest event time and the event count
    in tensors, and the last ``history_len`` interactions in a ring of fixed-size numpy rows
    (item row int32, weight float32, time in seconds int32: 12 bytes an entry). Items that fall
    out of the ring are still "consumed" (never recommended again): they spill into a compact
    int32 array for that user only, bounded by ``max_consumed``. There are no per-event Python
    objects, so state costs the same bytes per user however long the worker runs.

    With ``pool_len`` each user also keeps the top ``pool_len`` item rows of the list last
    ranked for them (4 bytes each, :meth:`remember_pools`): the learner draws its hard
    negatives from it (``Recommender.learn``), so it need not score the catalog a second time.
    Snapshots carry it (as item ids), so a user restored from the changelog or brought back
    after eviction learns exactly as if it had never left.

    Each user also remembers the hashes of its last ``dedup_window`` event ids (8 bytes each),
    so that an event delivered again (a restart replaying uncommitted records, a producer
    retry) is recognised by :meth:`seen` and not folded twice, and a ``shard`` tag (the
    partition its events come from) so a worker can let go of a partition's users at once.

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
    >>> items, weights = store.recent(rows, 3)
    >>> items.tolist(), weights.tolist()
    ([[-1, 0, 1]], [[0.0, 1.0, 1.0]])
    """

    def __init__(
        self,
        dim: int,
        *,
        half_life_s: float,
        history_len: int = 50,
        device: torch.device | str = "cpu",
        capacity: int = 1024,
        max_consumed: int = 10_000,
        dedup_window: int = 16,
        pool_len: int = 0,
    ) -> None:
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.dim = dim
        self.half_life_s = half_life_s
        self.history_len = history_len
        self.max_consumed = max_consumed
        self.dedup_window = dedup_window
        self.device = torch.device(device)
        self.vectors = torch.zeros((capacity, dim), device=self.device)
        self.last_ts_ms = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.counts = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self._rows: dict[str, int] = {}
        # History rings: entry c of a user (its c-th event, from 0) sits in slot c % history_len.
        self._ring_items = np.full((capacity, history_len), -1, dtype=np.int32)
        self._ring_weights = np.zeros((capacity, history_len), dtype=np.float32)
        self._ring_ts_s = np.zeros((capacity, history_len), dtype=np.int32)
        self._ring_counts = np.zeros(capacity, dtype=np.int64)
        # Consumed items that left the ring, per user (only users with more events than the ring).
        self._spilled: dict[int, array[int]] = {}
        # Hashes of the last event ids (slot = event number % window; 0 = empty) and shard tags.
        self._seen = np.zeros((capacity, max(1, dedup_window)), dtype=np.int64)
        self._shard = np.full(capacity, -1, dtype=np.int16)
        # The head of each user's last ranked list (-1: none yet), for hard negatives.
        self._pool = np.full((capacity, max(0, pool_len)), -1, dtype=np.int32)
        self._free: list[int] = []  # rows of removed users, reused first

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
                row = self._free.pop() if self._free else len(self._rows)
                self._ensure_capacity(row + 1)
                self._rows[uid] = row
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
        self._ring_items = _grow_np(self._ring_items, new_cap, -1)
        self._ring_weights = _grow_np(self._ring_weights, new_cap, 0)
        self._ring_ts_s = _grow_np(self._ring_ts_s, new_cap, 0)
        self._ring_counts = _grow_np(self._ring_counts, new_cap, 0)
        self._seen = _grow_np(self._seen, new_cap, 0)
        self._shard = _grow_np(self._shard, new_cap, -1)
        self._pool = _grow_np(self._pool, new_cap, -1)

    def fold(
        self,
        user_rows: Tensor,
        item_rows: Tensor,
        item_vectors: Tensor,
        weights: Tensor,
        ts_ms: Tensor,
        event_hashes: Sequence[int] | None = None,
    ) -> None:
        """Fold a batch of events into user state, exactly as folding them one by one would.

        ``event_hashes`` (:func:`event_id_hash` of each event's id) are remembered for
        :meth:`seen`; callers drop the events it reports before folding.

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
        users = user_rows.tolist()
        hashes = list(event_hashes) if event_hashes is not None else [0] * len(users)
        self._append(users, item_rows.tolist(), weights.tolist(), ts_ms.tolist(), hashes)

    def _append(
        self,
        users: list[int],
        items: list[int],
        weights: list[float],
        ts_ms: list[int],
        hashes: list[int],
    ) -> None:
        """Write events into the history rings in order, spilling what they push out."""
        h, window = self.history_len, self._seen.shape[1]
        ring_items, ring_counts = self._ring_items, self._ring_counts
        for u, i, wt, t, eh in zip(users, items, weights, ts_ms, hashes, strict=True):
            c = int(ring_counts[u])
            slot = c % h
            if c >= h:
                self._spill(u, int(ring_items[u, slot]))
            ring_items[u, slot] = i
            self._ring_weights[u, slot] = wt
            self._ring_ts_s[u, slot] = t // 1000 - _EPOCH_S
            if self.dedup_window:
                self._seen[u, c % window] = eh
            ring_counts[u] = c + 1

    # -- re-delivered events ---------------------------------------------------------------

    def seen(self, rows: Sequence[int | None], hashes: Sequence[int]) -> list[bool]:
        """Whether each event (its user's row, its :func:`event_id_hash`) is among the user's
        last ``dedup_window`` folded events (a ``None`` row, a user without state: never).

        Examples
        --------
        >>> store = UserStateStore(dim=1, half_life_s=1.0, dedup_window=2)
        >>> rows = store.rows_for(["u"])
        >>> store.fold(rows, torch.tensor([0]), torch.ones(1, 1), torch.ones(1),
        ...            torch.tensor([0]), event_hashes=[11])
        >>> store.seen([rows.item(), rows.item(), None], [11, 12, 11])
        [True, False, False]
        """
        if not self.dedup_window:
            return [False] * len(hashes)
        return [
            row is not None and bool((self._seen[row] == eh).any())
            for row, eh in zip(rows, hashes, strict=True)
        ]

    # -- the last ranked lists (hard negatives) ---------------------------------------------

    @property
    def pool_len(self) -> int:
        return int(self._pool.shape[1])

    def remember_pools(self, rows: Sequence[int], items: Tensor) -> None:
        """Keep ``items`` (``(len(rows), w)`` item rows, best first, ``-1`` for none) as the
        head of each row's last ranked list; only the first ``pool_len`` columns are kept.

        Examples
        --------
        >>> store = UserStateStore(dim=1, half_life_s=1.0, pool_len=2)
        >>> rows = store.rows_for(["u", "v"]).tolist()
        >>> store.remember_pools(rows, torch.tensor([[7, 3, 5], [4, -1, -1]]))
        >>> store.pools(torch.tensor(rows)).tolist()
        [[7, 3], [4, -1]]
        """
        width = self.pool_len
        if not width or not len(rows):
            return
        head = items[:, :width].cpu().numpy().astype(np.int32)
        r = np.asarray(rows, dtype=np.int64)
        self._pool[r] = -1
        self._pool[r, : head.shape[1]] = head

    def pools(self, rows: Tensor) -> Tensor:
        """The remembered list heads of ``rows`` as an ``(len(rows), pool_len)`` long tensor
        (``-1`` where there is none)."""
        out = self._pool[rows.cpu().numpy()].astype(np.int64)
        return torch.from_numpy(out).to(self.device)

    # -- shards, removal, snapshots ---------------------------------------------------------

    def set_shard(self, rows: Tensor | Sequence[int], shard: Sequence[int]) -> None:
        """Tag rows with the shard (Kafka partition) their events come from."""
        r = rows.cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows, dtype=np.int64)
        self._shard[r] = np.asarray(shard, dtype=np.int16)

    def users_of_shards(self, shards: Sequence[int]) -> list[str]:
        """The user ids tagged with any of ``shards``."""
        wanted = np.isin(self._shard, np.asarray(shards, dtype=np.int16))
        return [uid for uid, row in self._rows.items() if wanted[row]]

    def shards_of(self, user_ids: Sequence[str]) -> list[int]:
        """The shard tag of each (known) user."""
        return [int(self._shard[self._rows[uid]]) for uid in user_ids]

    def remove(self, user_ids: Sequence[str]) -> int:
        """Forget users entirely (their rows are reused); returns how many were known."""
        removed = 0
        for uid in user_ids:
            row = self._rows.pop(uid, None)
            if row is None:
                continue
            self._clear_row(row)
            self._free.append(row)
            removed += 1
        return removed

    def _clear_row(self, row: int) -> None:
        self.vectors[row] = 0
        self.last_ts_ms[row] = 0
        self.counts[row] = 0
        self._ring_items[row] = -1
        self._ring_weights[row] = 0
        self._ring_ts_s[row] = 0
        self._ring_counts[row] = 0
        self._seen[row] = 0
        self._shard[row] = -1
        self._pool[row] = -1
        self._spilled.pop(row, None)

    def snapshot(self, user_id: str, item_id: Callable[[int], str | None]) -> UserSnapshot:
        """The user's state with item rows turned into ids by ``item_id`` (``None``: the row
        holds no item any more, and the entry is left out)."""
        return self.snapshots([user_id], item_id)[0]

    def snapshots(
        self, user_ids: Sequence[str], item_id: Callable[[int], str | None], encoder: str = ""
    ) -> list[UserSnapshot]:
        """:meth:`snapshot` of each of ``user_ids`` (all known), gathered with one array
        operation per field for the whole batch: the worker writes one per touched user
        after every batch (the changelog), so the per-user Python work is kept to building
        the record itself; ``encoder`` tags every snapshot (see :class:`UserSnapshot`)."""
        if not user_ids:
            return []
        rows = np.array([self._rows[uid] for uid in user_ids], dtype=np.int64)
        at = torch.from_numpy(rows).to(self.device)
        vectors = self.vectors[at].cpu().numpy().astype("<f4")
        last_ts, counts = self.last_ts_ms[at].tolist(), self.counts[at].tolist()
        # History rings in entry order, oldest first (-1: no entry), as in _ring_order.
        h, c = self.history_len, self._ring_counts[rows]
        entry = c[:, None] + (np.arange(h) - h)[None, :]
        slot = np.where(entry >= 0, entry, 0) % h
        items = np.where(entry >= 0, self._ring_items[rows[:, None], slot], -1)
        weights = self._ring_weights[rows[:, None], slot].tolist()
        ts_ms = ((self._ring_ts_s[rows[:, None], slot].astype(np.int64) + _EPOCH_S) * 1000).tolist()
        window = self._seen.shape[1]
        seen_at = c[:, None] + (np.arange(window) - window)[None, :]
        seen = np.where(seen_at >= 0, self._seen[rows[:, None], np.maximum(seen_at, 0) % window], 0)
        seen_lists = seen.tolist() if self.dedup_window else [[] for _ in user_ids]
        pools = self._pool[rows]
        # Item ids looked up once per distinct row of the batch (None: no item), so that each
        # history below is one zip of three lists rather than a lookup per entry.
        names = _names_of(np.concatenate([items.reshape(-1), pools.reshape(-1)]), item_id)
        item_ids, pool_ids = names(items).tolist(), names(pools).tolist()
        start = (h - np.minimum(c, h)).tolist()  # the first column holding an entry
        out = []
        for i, (uid, row) in enumerate(zip(user_ids, rows.tolist(), strict=True)):
            a = start[i]
            history = tuple(zip(item_ids[i][a:], weights[i][a:], ts_ms[i][a:], strict=True))
            if None in item_ids[i][a:]:  # entries whose item has no id (left out)
                history = tuple(entry for entry in history if entry[0] is not None)
            spilled = self._spilled.get(row, ())
            consumed = tuple(iid for r in spilled if (iid := item_id(r)) is not None)
            out.append(
                UserSnapshot(
                    user_id=uid,
                    vector=vectors[i].tobytes(),
                    last_ts_ms=last_ts[i],
                    count=counts[i],
                    history=history,
                    consumed=consumed,
                    seen=tuple(x for x in seen_lists[i] if x),
                    encoder=encoder,
                    ranked=tuple(iid for iid in pool_ids[i] if iid),
                )
            )
        return out

    def restore(
        self, snapshot: UserSnapshot, item_row: Callable[[str], int | None], shard: int = -1
    ) -> int:
        """Replace (or create) a user's state from a snapshot; item ids are mapped to rows by
        ``item_row`` (unknown ids are left out). Returns the user's row.

        Examples
        --------
        >>> a = UserStateStore(dim=2, half_life_s=3600.0, history_len=2)
        >>> rows = a.rows_for(["u", "u", "u"])
        >>> a.fold(rows, torch.tensor([0, 1, 2]), torch.eye(3)[:, :2], torch.ones(3),
        ...        torch.tensor([0, 0, 0]), event_hashes=[1, 2, 3])
        >>> snap = a.snapshot("u", lambda r: "abc"[r])
        >>> snap.history, snap.consumed, snap.count
        ((('b', 1.0, 0), ('c', 1.0, 0)), ('a',), 3)
        >>> b = UserStateStore(dim=2, half_life_s=3600.0, history_len=2)
        >>> row = b.restore(snap, "abc".index)
        >>> b.snapshot("u", lambda r: "abc"[r]) == snap
        True
        """
        vector = np.frombuffer(snapshot.vector, dtype="<f4")
        if vector.shape != (self.dim,):
            raise ValueError(
                f"snapshot of {snapshot.user_id!r} has {vector.size} dims, not {self.dim}"
            )
        row = int(self.rows_for([snapshot.user_id])[0])
        self._clear_row(row)
        self.vectors[row] = torch.from_numpy(vector.astype(np.float32))
        self.last_ts_ms[row] = snapshot.last_ts_ms
        self.counts[row] = snapshot.count
        h, count = self.history_len, snapshot.count
        entries = snapshot.history[-h:]
        # Entry numbers as if the events had been folded here: the newest is count - 1.
        for n, (iid, weight, ts_ms) in zip(
            range(count - len(entries), count), entries, strict=True
        ):
            slot = n % h
            self._ring_items[row, slot] = -1 if (r := item_row(iid)) is None else r
            self._ring_weights[row, slot] = weight
            self._ring_ts_s[row, slot] = ts_ms // 1000 - _EPOCH_S
        self._ring_counts[row] = count
        spilled = [r for iid in snapshot.consumed if (r := item_row(iid)) is not None]
        if spilled:
            self._spilled[row] = array("i", spilled[-self.max_consumed :])
        if self.dedup_window:
            window = self._seen.shape[1]
            seen = snapshot.seen[-window:]
            for n, eh in zip(range(count - len(seen), count), seen, strict=True):
                self._seen[row, n % window] = eh
        ranked = [r for iid in snapshot.ranked if (r := item_row(iid)) is not None]
        ranked = ranked[: self.pool_len]
        self._pool[row, : len(ranked)] = ranked
        self._shard[row] = shard
        return row

    def rederive(self, rows: Sequence[int], item_vectors: Callable[[Tensor], Tensor]) -> None:
        """Rebuild the vectors of ``rows`` from their history rings: each remembered event's
        weight, decayed from its time to the user's newest, times ``item_vectors(item rows)``.

        This is what folding the remembered events in would have given with these item
        vectors, so it moves a user into another encoder's embedding space (a restored user
        whose vector was built with another encoder). It is exact for users whose every event
        is in the ring (times are kept in whole seconds there); for longer histories, events
        older than the ring are left out, the decayed tail of the sum.

        Examples
        --------
        >>> store = UserStateStore(dim=2, half_life_s=3600.0, history_len=4)
        >>> rows = store.rows_for(["u", "u"])
        >>> store.fold(rows, torch.tensor([0, 1]), torch.eye(2), torch.ones(2),
        ...            torch.tensor([0, 3_600_000]))
        >>> store.vectors[0].tolist()
        [0.5, 1.0]
        >>> store.rederive([0], lambda items: torch.eye(2).flip(1)[items])  # swapped space
        >>> store.vectors[0].tolist()
        [1.0, 0.5]
        """
        if not rows:
            return
        hist, weights, ts_ms = self.recent(list(rows), self.history_len, with_times=True)
        present = hist >= 0
        where = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        age_s = (self.last_ts_ms[where].unsqueeze(1) - ts_ms).clamp(min=0).double() / 1000.0
        w = decay(weights.double(), age_s, self.half_life_s).float() * present
        x = item_vectors(hist.clamp(min=0).reshape(-1)).reshape(*hist.shape, -1)
        self.vectors[where] = (w.unsqueeze(-1) * x.to(self.vectors.dtype)).sum(dim=1)

    def _spill(self, row: int, item: int) -> None:
        spilled = self._spilled.get(row)
        if spilled is None:
            spilled = self._spilled[row] = array("i")
        spilled.append(item)
        if len(spilled) > 64 and len(spilled) & (len(spilled) - 1) == 0:  # at powers of two
            kept = list(dict.fromkeys(reversed(spilled)))[: self.max_consumed]  # newest first
            self._spilled[row] = array("i", reversed(kept))

    def _ring_order(self, row: int) -> np.ndarray:
        """Slots of ``row``'s ring from oldest to newest entry."""
        c, h = int(self._ring_counts[row]), self.history_len
        if c <= h:
            return np.arange(c)
        return (np.arange(h) + c) % h

    @overload
    def recent(
        self, rows: Tensor | Sequence[int | None], n: int, *, with_times: Literal[False] = False
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def recent(
        self, rows: Tensor | Sequence[int | None], n: int, *, with_times: Literal[True]
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def recent(
        self, rows: Tensor | Sequence[int | None], n: int, *, with_times: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """The last ``n`` (at most ``history_len``) items of each row, oldest to newest and
        right-aligned: ``(items, weights)`` of shape ``(len(rows), n)``, padded with item
        ``-1`` and weight 0 on the left where a user has fewer events; with ``with_times``
        also each entry's time in ms (whole seconds). A ``None`` row (a user without state)
        has no entries."""
        n = min(n, self.history_len)
        if isinstance(rows, Tensor):
            r = rows.cpu().numpy()
        else:
            r = np.array([-1 if x is None else x for x in rows], dtype=np.int64)
        c = np.where(r >= 0, self._ring_counts[r.clip(min=0)], 0)  # (B,)
        r = r.clip(min=0)
        k = np.arange(n) - n  # -n .. -1: offsets from the newest entry
        pos = c[:, None] + k[None, :]  # (B, n) entry numbers
        valid = pos >= 0
        slot = np.where(valid, pos, 0) % self.history_len
        items = np.where(valid, self._ring_items[r[:, None], slot], -1)
        weights = np.where(valid, self._ring_weights[r[:, None], slot], 0.0)
        out_items = torch.from_numpy(items.astype(np.int64)).to(self.device)
        out_weights = torch.from_numpy(weights.astype(np.float32)).to(self.device)
        if not with_times:
            return out_items, out_weights
        ts_s = np.where(valid, self._ring_ts_s[r[:, None], slot].astype(np.int64) + _EPOCH_S, 0)
        return out_items, out_weights, torch.from_numpy(ts_s * 1000).to(self.device)

    def exclusions(self, rows: Sequence[int | None]) -> tuple[Tensor, Tensor]:
        """Every consumed item of each row as ``(position in rows, item row)`` pairs, ready
        for one ``scores[pos, item] = -inf`` (``None`` rows have none)."""
        known = [(p, r) for p, r in enumerate(rows) if r is not None]
        if not known:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty
        pos = np.array([p for p, _ in known], dtype=np.int64)
        r = np.array([r for _, r in known], dtype=np.int64)
        ring = self._ring_items[r]  # (B, H); -1 where unused
        b_idx, col = np.nonzero(ring >= 0)
        pos_parts, item_parts = [pos[b_idx]], [ring[b_idx, col].astype(np.int64)]
        for p, row in known:
            spilled = self._spilled.get(row)
            if spilled:
                item_parts.append(np.frombuffer(spilled, dtype=np.int32).astype(np.int64))
                pos_parts.append(np.full(len(spilled), p, dtype=np.int64))
        return (
            torch.from_numpy(np.concatenate(pos_parts)).to(self.device),
            torch.from_numpy(np.concatenate(item_parts)).to(self.device),
        )

    def event_count(self, user_id: str) -> int:
        row = self._rows.get(user_id)
        return 0 if row is None else int(self.counts[row])

    def history(self, user_id: str) -> Sequence[HistoryEntry]:
        row = self._rows.get(user_id)
        return () if row is None else self.history_of_row(row)

    def history_of_row(self, row: int) -> Sequence[HistoryEntry]:
        """The row's remembered interactions, oldest first."""
        return tuple(
            HistoryEntry(
                int(self._ring_items[row, s]),
                float(self._ring_weights[row, s]),
                (int(self._ring_ts_s[row, s]) + _EPOCH_S) * 1000,
            )
            for s in self._ring_order(row)
        )

    def consumed_of_row(self, row: int) -> set[int]:
        ring = self._ring_items[row]
        out = {int(i) for i in ring[ring >= 0]}
        out.update(self._spilled.get(row, ()))
        return out

    def consumed(self, user_id: str) -> set[int]:
        row = self._rows.get(user_id)
        return set() if row is None else self.consumed_of_row(row)

    def state_bytes(self) -> dict[str, int]:
        """Bytes held per part of the state (for ``bench/memory.py`` and the docs).

        ``vectors`` is the embedding itself; the rest is what a user costs beyond it.
        """
        n = max(1, len(self._rows))
        per_row = self.vectors.shape[0]  # capacity rows are allocated, used or not
        ring = self._ring_items.nbytes + self._ring_weights.nbytes + self._ring_ts_s.nbytes
        return {
            "users": len(self._rows),
            "capacity": per_row,
            "vectors": self.vectors.element_size() * self.vectors.nelement(),
            "times_counts": 8 * per_row * 3,
            "history_rings": ring,
            "ranked_pools": self._pool.nbytes,
            "spilled": sum(4 * len(a) + 64 for a in self._spilled.values()),
            "per_user_estimate": (ring + self._pool.nbytes + 8 * per_row * 3) // n,
        }


def _names_of(
    rows: np.ndarray, item_id: Callable[[int], str | None]
) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised ``item_id`` for arrays of rows drawn from ``rows`` (``-1``: None), that
    calls ``item_id`` once per distinct row."""
    distinct = np.unique(rows[rows >= 0])
    names = np.empty(len(distinct) + 1, dtype=object)
    names[:-1] = [item_id(int(r)) for r in distinct]
    names[-1] = None

    def lookup(a: np.ndarray) -> np.ndarray:
        at = np.searchsorted(distinct, a)
        return names[np.where(a >= 0, at, len(distinct))]

    return lookup


def _grow(t: Tensor, n: int) -> Tensor:
    out = torch.zeros((n, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


def _grow_np(a: np.ndarray, n: int, fill: int) -> np.ndarray:
    out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out
