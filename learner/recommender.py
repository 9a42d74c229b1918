"""The learner's facade: ``upsert_items`` / ``delete_items``, ``learn(events)``, ``recommend``.

It owns the item table, the user state, the head and trending popularity, and does no I/O.

Examples
--------
>>> import torch
>>> from learner.types import Event, Item
>>> class Bag:  # a toy encoder: one dimension per distinct word
...     name, dim, device = "bag", 8, torch.device("cpu")
...     def encode(self, texts):
...         words = ["space", "war", "love", "paris", "robot", "ship", "kiss", "rain"]
...         v = torch.tensor([[float(w in t.lower()) for w in words] for t in texts])
...         return torch.nn.functional.normalize(v + 1e-6, dim=-1)
>>> rec = Recommender(Bag())
>>> rec.upsert_items([Item("a", "Space war"), Item("b", "Robot ship in space"),
...                   Item("c", "Love in Paris"), Item("d", "Kiss in the rain")])
4
>>> report = rec.learn([Event("e1", "u1", "a", "click", None, 0)])
>>> top = rec.recommend(["u1"], k=1, min_events=1)[0]
>>> top.strategy, top.items[0].item_id, top.items[0].because
('personal', 'b', 'a')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from learner.cooccurrence import CoOccurrence
from learner.head import BilinearHead, HeadConfig
from learner.item_table import ItemTable
from learner.popularity import TrendingPopularity
from learner.types import Event, Item, ScoredItem, Strategy, UserRecommendation
from learner.user_state import EventWeights, UserStateStore

__all__ = ["Encoder", "LearnReport", "ModelConfig", "Recommender"]

DAY_S = 86_400.0


class Encoder(Protocol):
    """What the recommender needs of an encoder (``TextEncoder`` / ``CachedEncoder``)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def encode(self, texts: Sequence[str]) -> Tensor: ...


@dataclass(frozen=True)
class ModelConfig:
    """Model settings; the CLI maps its flags onto these."""

    user_half_life_s: float = 14 * DAY_S
    trending_half_life_s: float = 3 * DAY_S
    history_len: int = 50
    min_events: int = 3
    train: bool = True
    # Item-to-item co-occurrence: on/off, neighbours kept per item, history items paired.
    cooc: bool = True
    cooc_neighbours: int = 1024
    cooc_history: int = 20
    # Weight of the k-th most recent history item in the co-occurrence score is recency^k:
    # what a user just watched says most about what comes next.
    cooc_recency: float = 0.9
    # Trending popularity as a learned signal (beside the cold-start blend).
    trend_signal: bool = True
    bilinear_init: float = 1.0
    cooc_init: float = 1.0
    trend_init: float = 0.1
    # The head steps once this many training pairs are pending. With micro-batches (the
    # worker) 1 means one step per batch; event-at-a-time learning (evaluation) batches its
    # pairs, each still taken from the state before its own event.
    min_train_pairs: int = 1
    # Share of each pair's negatives taken from the model's own current top items (a pool of
    # ``hard_negative_pool``), the rest sampled (see HeadConfig.popular_negatives).
    hard_negatives: float = 0.5
    hard_negative_pool: int = 20
    head: HeadConfig = field(default_factory=HeadConfig)
    weights: EventWeights = field(default_factory=EventWeights)


@dataclass(frozen=True)
class LearnReport:
    """What one ``learn`` call did."""

    events: int
    trained_pairs: int
    loss: float
    unknown_items: tuple[str, ...] = ()


class Recommender:
    """Hybrid content + collaborative recommender updated online, one micro-batch at a time."""

    def __init__(self, encoder: Encoder, config: ModelConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or ModelConfig()
        self.device = encoder.device
        dim = encoder.dim
        self.items = ItemTable(dim, device=self.device)
        self.users = UserStateStore(
            dim,
            half_life_s=self.config.user_half_life_s,
            history_len=self.config.history_len,
            device=self.device,
        )
        init: list[float] = []
        self.cooc: CoOccurrence | None = None
        if self.config.cooc:
            self.cooc = CoOccurrence(max_neighbours=self.config.cooc_neighbours, device=self.device)
            init.append(self.config.cooc_init)
        if self.config.trend_signal:
            init.append(self.config.trend_init)
        self.head = BilinearHead(
            dim,
            self.config.head,
            device=self.device,
            signal_init=tuple(init),
            bilinear_init=self.config.bilinear_init,
        )
        self.trending = TrendingPopularity(self.config.trending_half_life_s, device=self.device)
        self._texts: dict[str, str] = {}
        self._pending: list[tuple[Tensor, ...]] = []
        self._pending_pairs = 0
        self._x_cache: tuple[tuple[int, int], Tensor] | None = None

    # -- catalog -------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        return f"{self.encoder.name}/head-{self.head.steps}"

    def upsert_items(self, items: Sequence[Item]) -> int:
        """Add or update items; only new or changed texts are encoded. Returns items stored."""
        latest = {item.item_id: item for item in items}  # the last version in a batch wins
        changed = [
            it
            for it in latest.values()
            if self._texts.get(it.item_id) != it.text or (it.item_id not in self.items)
        ]
        if not changed:
            return 0
        vectors = self.encoder.encode([it.text for it in changed])
        rows = self.items.upsert([it.item_id for it in changed], vectors)
        self.head.ensure_capacity(self.items.capacity)
        for it in changed:
            self._texts[it.item_id] = it.text
        return int(rows.numel())

    def delete_items(self, item_ids: Sequence[str]) -> int:
        """Remove items from the catalog; they are never recommended again until re-added."""
        for item_id in item_ids:
            self._texts.pop(item_id, None)
        return self.items.delete(item_ids)

    # -- learning ------------------------------------------------------------------------

    def learn(self, events: Sequence[Event]) -> LearnReport:
        """Learn from a micro-batch: one BPR step on pre-batch user state, then fold it in.

        Events naming an item that is not in the catalog are skipped and reported.
        """
        known: list[Event] = []
        unknown: list[str] = []
        item_rows: list[int] = []
        for ev in events:
            row = self.items.find(ev.item_id)
            if row is None:
                unknown.append(ev.item_id)
            else:
                known.append(ev)
                item_rows.append(row)
        if not known:
            return LearnReport(0, 0, 0.0, tuple(unknown))
        dev = self.device
        user_rows = self.users.rows_for([ev.user_id for ev in known])
        items = torch.tensor(item_rows, dtype=torch.long, device=dev)
        weights = torch.tensor(
            [self.config.weights.of(ev.type, ev.value) for ev in known], device=dev
        )
        ts = torch.tensor([ev.ts for ev in known], dtype=torch.int64, device=dev)

        loss, pairs = 0.0, 0
        if self.config.train:
            has_history = self.users.counts[user_rows] > 0
            if bool(has_history.any()):
                self._queue_pairs(user_rows[has_history], items[has_history])
            if self._pending_pairs >= self.config.min_train_pairs:
                loss, pairs = self._train_step()
        if self.cooc is not None:
            self._observe_cooccurrence(known, user_rows, items, weights)
        x = self.items.embeddings[items] + self.head.delta[items]  # e_v + δ_v of these rows
        self.users.fold(user_rows, items, x, weights, ts)
        self.trending.observe(items, weights, ts)
        return LearnReport(len(known), pairs, loss, tuple(unknown))

    def _personal_scores(self, vectors: Tensor, counts: Tensor, signals: list[Tensor]) -> Tensor:
        """The head's score of every item row for each user (no blending, no masking)."""
        x = self._item_matrix()
        w = self.head.mixing(counts)
        out = w[:, :1] * (self.head.query(vectors) @ x.T) + self.head.bias[: x.shape[0]]
        for s_i, signal in enumerate(signals):
            out = out + w[:, 1 + s_i : 2 + s_i] * signal
        return out

    def _hard_negatives(
        self, user_rows: Tensor, pos: Tensor, signals: list[Tensor], count: int
    ) -> Tensor:
        """``count`` negatives per pair drawn from the items the model ranks highest now.

        These are the items a top-K list is decided on; uniform negatives are mostly items
        nobody would rank anyway, and learning to beat them trades top-K quality for AUC.
        """
        with torch.no_grad():
            scores = self._personal_scores(
                self.users.vectors[user_rows], self.users.counts[user_rows], signals
            )
            n = scores.shape[1]
            scores = scores.masked_fill(~self.items.active[:n].unsqueeze(0), float("-inf"))
            for i, r in enumerate(user_rows.tolist()):
                consumed = self.users.consumed_of_row(r)
                if consumed:
                    scores[i, torch.tensor(sorted(consumed), device=self.device)] = float("-inf")
            scores.scatter_(1, pos.unsqueeze(1), float("-inf"))
            pool = min(self.config.hard_negative_pool, n)
            top = torch.topk(scores, pool, dim=-1).indices
            pick = torch.randint(0, pool, (top.shape[0], count), generator=self.head.generator)
            return top.gather(1, pick.to(self.device))

    def _queue_pairs(self, user_rows: Tensor, pos: Tensor) -> None:
        """Snapshot training pairs from the current (pre-event) state for the next step."""
        b = int(pos.numel())
        signals = self._signals(user_rows.tolist()) if self.head.n_signals else []
        n_hard = round(self.head.config.negatives * self.config.hard_negatives)
        neg = self.head.sample_negatives(
            self.items.active,
            b,
            self.trending.scores(self.items.capacity),
            count=self.head.config.negatives - n_hard,
        )
        if n_hard:
            neg = torch.cat([neg, self._hard_negatives(user_rows, pos, signals, n_hard)], dim=1)
        n_sig = self.head.n_signals
        pos_sig = torch.zeros((b, n_sig), device=self.device)
        neg_sig = torch.zeros((b, neg.shape[1], n_sig), device=self.device)
        if n_sig:
            full = [sig.expand(b, -1) for sig in signals]
            pos_sig = torch.stack([f.gather(1, pos.unsqueeze(1)).squeeze(1) for f in full], -1)
            neg_sig = torch.stack([f.gather(1, neg) for f in full], -1)
        self._pending.append(
            (
                self.users.vectors[user_rows].clone(),
                pos,
                neg,
                pos_sig,
                neg_sig,
                self.users.counts[user_rows].clone(),
            )
        )
        self._pending_pairs += b

    def _train_step(self) -> tuple[float, int]:
        """One BPR step on the pending pairs."""
        parts = [torch.cat(column) for column in zip(*self._pending, strict=True)]
        self._pending, self._pending_pairs = [], 0
        users, pos, neg, pos_sig, neg_sig, counts = parts
        loss = self.head.step(
            users,
            pos,
            neg,
            self.items.embeddings,
            pos_sig if self.head.n_signals else None,
            neg_sig if self.head.n_signals else None,
            counts,
        )
        self._x_cache = None
        return loss, int(neg.numel())

    def _observe_cooccurrence(
        self, events: Sequence[Event], user_rows: Tensor, items: Tensor, weights: Tensor
    ) -> None:
        """Pair each event's item with its user's recent items (earlier events of the same
        batch included), then update the neighbour lists once for the whole batch."""
        assert self.cooc is not None
        n_recent = self.config.cooc_history
        recent: dict[int, list[tuple[int, float]]] = {}
        histories: list[list[tuple[int, float]]] = []
        item_list, weight_list = items.tolist(), weights.tolist()
        for u, i, w in zip(user_rows.tolist(), item_list, weight_list, strict=True):
            if u not in recent:
                tail = list(self.users.history_of_row(u))[-n_recent:]
                recent[u] = [(h.item_row, h.weight) for h in tail]
            histories.append(recent[u][-n_recent:])
            recent[u] = [*recent[u][-n_recent + 1 :], (i, w)]
        self.cooc.observe_many(item_list, weight_list, histories)

    def _signals(self, user_rows: Sequence[int | None]) -> list[Tensor]:
        """The non-bilinear signals, each broadcastable to ``(users, num_rows)``, in [0, 1]."""
        n = self.items.num_rows
        out: list[Tensor] = []
        if self.cooc is not None:
            rows = []
            for r in user_rows:
                hist = () if r is None else self.users.history_of_row(r)
                recent = list(hist)[-self.config.cooc_history :]
                last = len(recent) - 1
                recency = self.config.cooc_recency
                rows.append(
                    self.cooc.scores(
                        torch.tensor(
                            [h.item_row for h in recent], dtype=torch.long, device=self.device
                        ),
                        torch.tensor(
                            [h.weight * recency ** (last - j) for j, h in enumerate(recent)],
                            device=self.device,
                        ),
                        n,
                    )
                )
            out.append(torch.stack(rows) if rows else torch.zeros((0, n), device=self.device))
        if self.config.trend_signal:
            t = torch.log1p(self.trending.scores(n))
            out.append((t / t.max().clamp(min=1e-9)).unsqueeze(0))
        return out

    # -- ranking -------------------------------------------------------------------------

    def _item_matrix(self) -> Tensor:
        key = (self.items.version, self.head.steps)
        if self._x_cache is None or self._x_cache[0] != key:
            n = self.items.num_rows
            self._x_cache = (key, self.head.item_vectors(self.items.embeddings, n))
        return self._x_cache[1]

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        min_events: int | None = None,
        explain: bool = True,
    ) -> list[UserRecommendation]:
        """Top-``k`` for each user, excluding consumed and deleted items, with ``because``
        (``None`` everywhere when ``explain`` is false, which saves time in evaluation).

        Users with fewer than ``min_events`` events get trending items blended with their
        personal list in proportion to how much history they have (none: trending only).
        """
        if not user_ids:
            return []
        min_ev = self.config.min_events if min_events is None else min_events
        n = self.items.num_rows
        dev = self.device
        rows = [self.users.row(uid) for uid in user_ids]
        vectors = torch.stack(
            [
                self.users.vectors[r] if r is not None else torch.zeros(self.items.dim, device=dev)
                for r in rows
            ]
        )
        counts = torch.tensor(
            [0 if r is None else int(self.users.counts[r]) for r in rows], device=dev
        )
        with torch.no_grad():
            x = self._item_matrix()
            signals = self._signals(rows) if self.head.n_signals else []
            personal = self._personal_scores(vectors, counts, signals)
            alpha = (counts.float() / max(1, min_ev)).clamp(max=1.0).unsqueeze(-1)
            live = self.items.active[:n]
            scores = personal
            if bool((alpha < 1).any()):
                trend = _minmax(self.trending.scores(n), live).unsqueeze(0)
                scores = alpha * _minmax_rows(personal, live) + (1 - alpha) * trend
            scores = scores.masked_fill(~live.unsqueeze(0), float("-inf"))
            for i, uid in enumerate(user_ids):
                consumed = self.users.consumed(uid)
                if consumed:
                    idx = torch.tensor(sorted(consumed), dtype=torch.long, device=dev)
                    scores[i, idx] = float("-inf")
            top = torch.topk(scores, k=min(k, n), dim=-1) if n else None
        out = []
        for i, uid in enumerate(user_ids):
            items: list[ScoredItem] = []
            if top is not None:
                vals, idxs = top.values[i], top.indices[i]
                keep = torch.isfinite(vals)
                vals, idxs = vals[keep], idxs[keep]
                because = self._because(uid, idxs, x) if explain else [None] * int(idxs.numel())
                items = [
                    ScoredItem(self.items.ids[j], float(s), b)
                    for j, s, b in zip(idxs.tolist(), vals.tolist(), because, strict=True)
                ]
            count = int(counts[i])
            strategy: Strategy = (
                "popular" if count == 0 else "personal" if count >= min_ev else "blend"
            )
            row = rows[i]
            event_ts = 0 if row is None else int(self.users.last_ts_ms[row])
            out.append(UserRecommendation(uid, items, strategy, self.model_version, event_ts))
        return out

    def _because(self, user_id: str, item_rows: Tensor, x: Tensor) -> list[str | None]:
        """For each recommended row, the history item that contributed most to its score:
        its share of the bilinear score plus its share of the co-occurrence score, each with
        the weight the head gives that signal for this user."""
        history = self.users.history(user_id)
        if not history or item_rows.numel() == 0:
            return [None] * int(item_rows.numel())
        hist_rows = torch.tensor([h.item_row for h in history], device=self.device)
        newest = max(h.ts_ms for h in history)
        w = torch.tensor(
            [
                h.weight * 2.0 ** (-(newest - h.ts_ms) / 1000.0 / self.config.user_half_life_s)
                for h in history
            ],
            device=self.device,
        )
        mix = self.head.mixing(torch.tensor([len(history)], device=self.device))[0]
        q = self.head.query(x[hist_rows])  # (H, d): each history item as a one-item user
        contrib = mix[0] * w.unsqueeze(-1) * (q @ x[item_rows].T) / w.sum()  # (H, K)
        if self.cooc is not None:
            recent = len(history) - min(len(history), self.config.cooc_history)
            a = torch.tensor(
                [
                    h.weight * self.config.cooc_recency ** (len(history) - 1 - j)
                    if j >= recent
                    else 0.0
                    for j, h in enumerate(history)
                ],
                device=self.device,
            )
            sim = self.cooc.similarity(hist_rows, item_rows)  # (H, K)
            contrib = contrib + mix[1] * a.unsqueeze(-1) * sim / a.sum().clamp(min=1e-9)
        best = contrib.argmax(dim=0).tolist()
        return [self.items.ids[int(hist_rows[b])] for b in best]


def _minmax(v: Tensor, live: Tensor) -> Tensor:
    """Scale ``v`` to [0, 1] over the live entries."""
    if not bool(live.any()):
        return torch.zeros_like(v)
    lo, hi = v[live].min(), v[live].max()
    return (v - lo) / (hi - lo).clamp(min=1e-12)


def _minmax_rows(m: Tensor, live: Tensor) -> Tensor:
    """Scale each row of ``m`` to [0, 1] over the live columns."""
    if not bool(live.any()):
        return torch.zeros_like(m)
    masked = m[:, live]
    lo = masked.min(dim=1, keepdim=True).values
    hi = masked.max(dim=1, keepdim=True).values
    return (m - lo) / (hi - lo).clamp(min=1e-12)
