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

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from learner.ann import AnnConfig, CatalogIndex, mips_queries
from learner.cooccurrence import CoOccurrence
from learner.head import BilinearHead, HeadConfig
from learner.image_encoder import ImageEncoding
from learner.item_table import ItemTable
from learner.popularity import TrendingPopularity
from learner.profiles import ProfileTable, profile_share, profile_text
from learner.rerank import greedy_select
from learner.rules import RuleIndex, Rules
from learner.types import Event, Item, ScoredItem, Strategy, UserProfile, UserRecommendation
from learner.user_state import EventWeights, UserSnapshot, UserStateStore, event_id_hash

__all__ = [
    "Encoder",
    "ImageEncoderLike",
    "LearnReport",
    "ModelConfig",
    "Recommender",
    "UpsertReport",
    "list_strategy",
]

DAY_S = 86_400.0
# Exact scoring takes users in chunks whose (users, items) score matrix stays under this many
# floats (128 MB): a million items times 1024 users would otherwise be 4 GB at once.
_SCORE_ELEMENTS = 1 << 25
# Users per chunk of approximate scoring (their candidates' vectors are gathered at once).
_ANN_CHUNK = 128
# Lowest-scoring candidates fetched for users who blend with trending items: their min-max
# scaling needs the catalog's lowest personal score.
_LOW_CANDIDATES = 16


class Encoder(Protocol):
    """What the recommender needs of an encoder (``TextEncoder`` / ``CachedEncoder``)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def encode(self, texts: Sequence[str]) -> Tensor: ...


class ImageEncoderLike(Protocol):
    """What the recommender needs of an image encoder (``ImageEncoder`` /
    ``CachedImageEncoder``): images that fail come back with ``ok`` false and a reason."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, images: Sequence[bytes]) -> ImageEncoding: ...


@dataclass(frozen=True)
class ModelConfig:
    """Model settings; the CLI maps its flags onto these."""

    user_half_life_s: float = 14 * DAY_S
    trending_half_life_s: float = 3 * DAY_S
    history_len: int = 50
    # Consumed items older than the history ring that are still never recommended again, per
    # user (4 bytes each): bounds a heavy user's memory.
    max_consumed: int = 10_000
    # Ids of each user's last this-many events are remembered (8 bytes each): an event seen
    # again among them is a no-op, so re-delivery after a restart does not count twice.
    dedup_window: int = 16
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
    # Share of each pair's negatives taken from the model's own top items for the user: the
    # first ``hard_negative_pool`` of the list last ranked for them (kept per user, see
    # ``_queue_pairs``); the rest sampled (see HeadConfig.popular_negatives).
    hard_negatives: float = 0.5
    hard_negative_pool: int = 20
    head: HeadConfig = field(default_factory=HeadConfig)
    weights: EventWeights = field(default_factory=EventWeights)
    # Rank from approximate candidates (learner/ann.py, re-scored exactly) once the live catalog
    # has this many items; below it, and with 0, every item is scored.
    ann_min_items: int = 50_000
    ann: AnnConfig = field(default_factory=AnnConfig)
    # Profile cold start: a user's profile vector counts as this many events. The vector the
    # head scores a user by is (1 - b) ĥ_u + b p_u, with b = m / (m + n) for n events (so a
    # user with no events is their profile, one with m events is half profile); a profile also
    # counts as m events in the trending blend (see ``recommend``). 0 turns profiles off.
    profile_weight: float = 1.0
    # -- diversity and business rules (issue 7): applied when ranking for a list (recommend),
    # never to training. MMR's lambda (0: plain relevance order, today's lists exactly).
    diversity: float = 0.0
    # Candidates ranked by relevance from which MMR and the per-value caps of ``rules`` pick
    # the list; a user left short by the caps is re-ranked over the whole catalog.
    rerank_pool: int = 500
    rules: Rules = field(default_factory=Rules)


@dataclass(frozen=True)
class LearnReport:
    """What one ``learn`` call did."""

    events: int
    trained_pairs: int
    loss: float
    unknown_items: tuple[str, ...] = ()
    # Events whose id the user's state had already folded in (skipped, not learned twice).
    duplicates: int = 0


@dataclass(frozen=True)
class UpsertReport:
    """What one ``upsert_items_report`` call did: items stored, and ``(item_id, reason)`` for
    each item whose image did not decode (stored without an image embedding)."""

    stored: int
    bad_images: tuple[tuple[str, str], ...] = ()


class Recommender:
    """Hybrid content + collaborative recommender updated online, one micro-batch at a time."""

    # The approximate top-K index, built on first use once the catalog is large enough.
    _ann: CatalogIndex | None = None

    def __init__(
        self,
        encoder: Encoder,
        config: ModelConfig | None = None,
        *,
        image_encoder: ImageEncoderLike | None = None,
    ) -> None:
        self.encoder = encoder
        self.image_encoder = image_encoder
        self.config = config or ModelConfig()
        self.device = encoder.device
        dim = encoder.dim
        image_dim = 0 if image_encoder is None else image_encoder.dim
        self.items = ItemTable(dim, device=self.device, image_dim=image_dim)
        self.users = UserStateStore(
            dim,
            half_life_s=self.config.user_half_life_s,
            history_len=self.config.history_len,
            max_consumed=self.config.max_consumed,
            dedup_window=self.config.dedup_window,
            device=self.device,
            # The head of each user's last list, where learn() takes hard negatives from.
            pool_len=self._hard_pool() if self.config.train else 0,
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
            image_dim=image_dim,
        )
        self.trending = TrendingPopularity(self.config.trending_half_life_s, device=self.device)
        self.profiles = ProfileTable(dim, device=self.device)
        self._texts: dict[str, str] = {}
        self._image_keys: dict[str, str | None] = {}  # hash of each item's image bytes
        self._pending: list[tuple[Tensor, ...]] = []
        self._pending_pairs = 0
        self._x_cache: tuple[tuple[int, int], Tensor] | None = None
        if not 0.0 <= self.config.diversity <= 1.0:
            raise ValueError("diversity must lie in [0, 1]")
        self.rules = (
            RuleIndex(self.config.rules, device=self.device) if self.config.rules.active else None
        )
        # Restored users whose vectors were rebuilt for this encoder (restore_users).
        self.rederived_users = 0

    # -- catalog -------------------------------------------------------------------------

    @property
    def encoder_name(self) -> str:
        """The frozen encoders' names: the text encoder's, then ``+`` the image encoder's."""
        if self.image_encoder is None:
            return self.encoder.name
        return f"{self.encoder.name}+{self.image_encoder.name}"

    @property
    def model_version(self) -> str:
        return f"{self.encoder_name}/head-{self.head.steps}"

    def upsert_items(self, items: Sequence[Item]) -> int:
        """Add or update items; only new or changed texts are encoded. Returns items stored."""
        return self.upsert_items_report(items).stored

    def upsert_items_report(self, items: Sequence[Item]) -> UpsertReport:
        """:meth:`upsert_items`, reporting also the items whose image did not decode.

        Without an image encoder, images are ignored. With one, an item is re-encoded when its
        text or its image bytes change; one whose image does not decode is stored with its text
        embedding only (and ranks like an item without an image).
        """
        latest = {item.item_id: item for item in items}  # the last version in a batch wins
        with_images = self.image_encoder is not None
        image_keys = {
            it.item_id: None if it.image is None else hashlib.sha256(it.image).hexdigest()
            for it in (latest.values() if with_images else ())
        }
        changed = [
            it
            for it in latest.values()
            if self._texts.get(it.item_id) != it.text
            or (it.item_id not in self.items)
            or (with_images and self._image_keys.get(it.item_id) != image_keys[it.item_id])
        ]
        if not changed:
            return UpsertReport(0)
        vectors = self.encoder.encode([it.text for it in changed])
        images, present, bad = self._encode_images(changed)
        rows = self.items.upsert([it.item_id for it in changed], vectors, images, present)
        self.head.ensure_capacity(self.items.capacity)
        if self.rules is not None:
            self.rules.update(rows.tolist(), changed)
        for it in changed:
            self._texts[it.item_id] = it.text
            if with_images:
                self._image_keys[it.item_id] = image_keys[it.item_id]
        return UpsertReport(int(rows.numel()), bad)

    def _encode_images(
        self, items: Sequence[Item]
    ) -> tuple[Tensor | None, Tensor | None, tuple[tuple[str, str], ...]]:
        """Image vectors ``(n, image_dim)`` and presence ``(n,)`` of ``items`` (None without an
        image encoder), and ``(item_id, reason)`` of the images that did not decode."""
        if self.image_encoder is None:
            return None, None, ()
        where = [j for j, it in enumerate(items) if it.image is not None]
        vectors = torch.zeros((len(items), self.image_encoder.dim), device=self.device)
        present = torch.zeros(len(items), dtype=torch.bool, device=self.device)
        if not where:
            return vectors, present, ()
        result = self.image_encoder.encode([items[j].image or b"" for j in where])
        idx = torch.tensor(where, dtype=torch.long, device=self.device)
        vectors[idx] = result.vectors.to(self.device, torch.float32)
        present[idx] = result.ok.to(self.device)
        bad = tuple(
            (items[j].item_id, err)
            for j, err in zip(where, result.errors, strict=True)
            if err is not None
        )
        return vectors, present, bad

    def delete_items(self, item_ids: Sequence[str]) -> int:
        """Remove items from the catalog; they are never recommended again until re-added."""
        for item_id in item_ids:
            self._texts.pop(item_id, None)
            self._image_keys.pop(item_id, None)
        return self.items.delete(item_ids)

    # -- profiles ------------------------------------------------------------------------

    def upsert_profiles(self, profiles: Sequence[UserProfile]) -> int:
        """Add or replace users' profiles; only texts not seen before are encoded. A profile
        whose text is empty (no attribute the template knows) removes the user's profile.
        Returns the profiles stored."""
        latest = {p.user_id: profile_text(p.attributes) for p in profiles}
        empty = [uid for uid, text in latest.items() if not text]
        self.profiles.remove(empty)
        kept = {uid: text for uid, text in latest.items() if text}
        new_texts = self.profiles.missing(list(kept.values()))
        if new_texts:
            self.profiles.add_texts(new_texts, self.encoder.encode(new_texts))
        for uid, text in kept.items():
            self.profiles.assign(uid, text)
        return len(kept)

    def delete_profiles(self, user_ids: Sequence[str]) -> int:
        """Forget users' profiles (their event state is untouched); returns how many had one."""
        return self.profiles.remove(user_ids)

    def _start_vectors(
        self, user_ids: Sequence[str], vectors: Tensor, counts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The vectors the head scores users by, and which users have a profile.

        For a user with a profile ``p`` (unit length) and ``n`` events:
        ``(1 - b) ĥ + b p`` with ``b = m / (m + n)``, ``m = profile_weight``; other users'
        vectors are returned unchanged, so without profiles nothing differs.
        """
        m = self.config.profile_weight
        if m <= 0 or not len(self.profiles):
            return vectors, torch.zeros(len(user_ids), dtype=torch.bool, device=self.device)
        p, found = self.profiles.lookup(user_ids)
        if not bool(found.any()):
            return vectors, found
        b = profile_share(counts, m).unsqueeze(-1)
        h = torch.nn.functional.normalize(vectors, dim=-1)
        blended = (1 - b) * h + b * p
        return torch.where(found.unsqueeze(-1), blended, vectors), found

    # -- learning ------------------------------------------------------------------------

    def learn(self, events: Sequence[Event]) -> LearnReport:
        """Learn from a micro-batch: one BPR step on pre-batch user state, then fold it in.

        Events naming an item that is not in the catalog are skipped and reported; so are
        events whose id the user's state already holds (re-deliveries), as ``duplicates``.
        """
        hashes = [event_id_hash(ev.event_id) for ev in events]
        repeat = self.users.seen([self.users.row(ev.user_id) for ev in events], hashes)
        if self.config.dedup_window:
            in_batch: set[tuple[str, int]] = set()
            for n, (ev, eh) in enumerate(zip(events, hashes, strict=True)):
                repeat[n] = repeat[n] or (ev.user_id, eh) in in_batch
                in_batch.add((ev.user_id, eh))
        known: list[Event] = []
        known_hashes: list[int] = []
        unknown: list[str] = []
        item_rows: list[int] = []
        for ev, eh, dup in zip(events, hashes, repeat, strict=True):
            row = self.items.find(ev.item_id)
            if row is None:
                unknown.append(ev.item_id)
            elif not dup:
                known.append(ev)
                known_hashes.append(eh)
                item_rows.append(row)
        duplicates = sum(repeat)
        if not known:
            return LearnReport(0, 0, 0.0, tuple(unknown), duplicates)
        dev = self.device
        user_rows = self.users.rows_for([ev.user_id for ev in known])
        items = torch.tensor(item_rows, dtype=torch.long, device=dev)
        weights = torch.tensor(
            [self.config.weights.of(ev.type, ev.value) for ev in known], device=dev
        )
        ts = torch.tensor([ev.ts for ev in known], dtype=torch.int64, device=dev)

        loss, pairs = 0.0, 0
        if self.config.train:
            counts = self.users.counts[user_rows]
            vectors, profiled = self._start_vectors(
                [ev.user_id for ev in known], self.users.vectors[user_rows], counts
            )
            # A user with a profile has a representation before their first event.
            usable = (counts > 0) | profiled
            if bool(usable.any()):
                self._queue_pairs(user_rows[usable], items[usable], vectors[usable])
            if self._pending_pairs >= self.config.min_train_pairs:
                loss, pairs = self._train_step()
        if self.cooc is not None:
            self._observe_cooccurrence(known, user_rows, items, weights)
        with torch.no_grad():  # e_v + δ_v of these rows
            x = self.head.vectors_at(self.items.embeddings, items, self.items.image_view())
        self.users.fold(user_rows, items, x, weights, ts, event_hashes=known_hashes)
        self.trending.observe(items, weights, ts)
        return LearnReport(len(known), pairs, loss, tuple(unknown), duplicates)

    # -- user state in and out (the changelog) -------------------------------------------

    def snapshot_users(self, user_ids: Sequence[str]) -> list[UserSnapshot]:
        """The state of each known user in ``user_ids``, with item ids (not rows), tagged with
        the encoder whose space the vectors live in."""
        ids = self.items.ids
        known = [uid for uid in dict.fromkeys(user_ids) if uid in self.users]
        return self.users.snapshots(
            known, lambda r: ids[r] if r < len(ids) else None, encoder=self.encoder.name
        )

    def restore_users(self, snapshots: Sequence[UserSnapshot], shard: int = -1) -> int:
        """Replace (or create) users' state from snapshots; returns how many.

        A snapshot taken under another encoder (its ``encoder`` names another one, or its
        vector has another size) keeps its history, counts and consumed items, but its vector
        lives in the other encoder's space: it is rebuilt from the history with this
        catalog's item vectors (``UserStateStore.rederive``) and counted in
        ``rederived_users``. This is what lets a worker restart with a new ``--encoder-dir``
        without losing anyone.
        """
        name, dim = self.encoder.name, self.users.dim
        moved: list[int] = []
        for snap in snapshots:
            foreign = (snap.encoder and snap.encoder != name) or len(snap.vector) != 4 * dim
            if foreign:
                snap = replace(snap, vector=bytes(4 * dim))
            row = self.users.restore(snap, self.items.row_any, shard)
            if foreign:
                moved.append(row)
        if moved:
            self.users.rederive(moved, self._item_vectors)
            self.rederived_users += len(moved)
        return len(snapshots)

    def _item_vectors(self, rows: Tensor) -> Tensor:
        """``e_v + δ_v`` of item rows: what a user's vector sums (as in :meth:`learn`)."""
        return self.items.embeddings[rows] + self.head.delta[rows]

    def _personal_scores(
        self, vectors: Tensor, counts: Tensor, rows: Sequence[int | None]
    ) -> Tensor:
        """The head's score of every item row for each user (no blending, no masking):
        ``w_0 q_u·x_v + b_v + Σ_s w_s f_s(u, v)``. One matrix product starts from the bias,
        trending is a rank-one update and co-occurrence is added in place
        (``CoOccurrence.add_scores``), all into the same ``(users, items)`` tensor (``rows``
        are the users' state rows, for co-occurrence)."""
        x = self._item_matrix()
        n = x.shape[0]
        w = self.head.mixing(counts)
        out = torch.addmm(self.head.bias[:n].unsqueeze(0), self.head.query(vectors) * w[:, :1], x.T)
        s_i = 1
        if self.cooc is not None:
            self.cooc.add_scores(out, *self._cooc_history(rows), w[:, s_i])
            s_i += 1
        if self.config.trend_signal:
            out.addr_(w[:, s_i], self._trend_signal(n))
        return out

    def _hard_negatives(
        self, user_rows: Tensor, vectors: Tensor, pos: Tensor, count: int
    ) -> Tensor:
        """``count`` negatives per pair drawn from the items the model ranks highest now.

        These are the items a top-K list is decided on; uniform negatives are mostly items
        nobody would rank anyway, and learning to beat them trades top-K quality for AUC.
        """
        with torch.no_grad():
            counts = self.users.counts[user_rows]
            scores = self._personal_scores(vectors, counts, user_rows.tolist())
            n = scores.shape[1]
            scores = scores.masked_fill(~self.items.active[:n].unsqueeze(0), float("-inf"))
            who, what = self.users.exclusions(user_rows.tolist())
            scores[who, what] = float("-inf")
            scores.scatter_(1, pos.unsqueeze(1), float("-inf"))
            pool = min(self.config.hard_negative_pool, n)
            top = torch.topk(scores, pool, dim=-1).indices
            pick = torch.randint(0, pool, (top.shape[0], count), generator=self.head.generator)
            return top.gather(1, pick.to(self.device))

    def _hard_negatives_ann(
        self, user_rows: Tensor, vectors: Tensor, pos: Tensor, fallback: Tensor, count: int
    ) -> Tensor:
        """:meth:`_hard_negatives` for ANN-sized catalogs: the pool is each user's top items
        from the ANN candidates, re-scored exactly (``_top_ann``), without the positive.
        A user with too few eligible items draws from ``fallback`` (sampled negatives)."""
        with torch.no_grad():
            b = int(user_rows.numel())
            pool = min(self.config.hard_negative_pool, self.items.num_rows)
            values, top = self._top_ann(
                user_rows.tolist(),
                vectors,
                self.users.counts[user_rows],
                torch.ones(b, device=self.device),
                pool + 1,
            )
            usable = torch.isfinite(values) & (top != pos.unsqueeze(1))
            # Usable rows first (stable), so the first `pool` columns hold the best of them.
            order = torch.argsort((~usable).to(torch.int8), dim=1, stable=True)[:, :pool]
            top, usable = top.gather(1, order), usable.gather(1, order)
            top = torch.where(usable, top, fallback.unsqueeze(1))
            pick = torch.randint(0, pool, (b, count), generator=self.head.generator)
            return top.gather(1, pick.to(self.device))

    def _signals_at(self, user_rows: Sequence[int | None], cols: Tensor) -> Tensor:
        """The values of :meth:`_signals` at ``cols`` (``(B, C)`` item rows) only, as a
        ``(B, C, signals)`` tensor, without scoring the whole catalog."""
        n = self.items.num_rows
        out: list[Tensor] = []
        if self.cooc is not None:
            out.append(self.cooc.scores_at(*self._cooc_history(user_rows), cols))
        if self.config.trend_signal:
            out.append(self._trend_signal(n)[cols])
        return torch.stack(out, dim=-1)

    def _queue_pairs(self, user_rows: Tensor, pos: Tensor, vectors: Tensor) -> None:
        """Snapshot training pairs from the current (pre-event) state for the next step;
        ``vectors`` are the users' vectors as ranking sees them (``_start_vectors``).

        Hard negatives come from the head of the list last ranked for each user
        (``_remember_pools``): the worker ranks every user it learns from, so that list is
        the model's top for the user's state before this event, and learning need not score
        the catalog again (a restored user brings theirs in the state record's ``ranked``). A
        user without one (only ever learned from, or restored from a record without it) is
        scored here: densely, or from the ANN candidates for large catalogs.
        """
        b = int(pos.numel())
        n_hard = round(self.head.config.negatives * self.config.hard_negatives)
        neg = self.head.sample_negatives(
            self.items.active,
            b,
            self.trending.scores(self.items.capacity),
            count=self.head.config.negatives - n_hard,
        )
        if n_hard:
            hard, missing = self._pool_negatives(user_rows, pos, n_hard)
            if bool(missing.any()):
                lost = torch.nonzero(missing).squeeze(-1)
                stand_in = neg[lost, 0] if neg.shape[1] else None
                hard[lost] = self._scored_negatives(
                    user_rows[lost], vectors[lost], pos[lost], stand_in, n_hard
                )
            neg = torch.cat([neg, hard], dim=1)
        n_sig = self.head.n_signals
        pos_sig = torch.zeros((b, n_sig), device=self.device)
        neg_sig = torch.zeros((b, neg.shape[1], n_sig), device=self.device)
        if n_sig:
            at = self._signals_at(user_rows.tolist(), torch.cat([pos.unsqueeze(1), neg], dim=1))
            pos_sig, neg_sig = at[:, 0], at[:, 1:]
        self._pending.append(
            (
                vectors.clone(),
                pos,
                neg,
                pos_sig,
                neg_sig,
                self.users.counts[user_rows].clone(),
            )
        )
        self._pending_pairs += b

    def _pool_negatives(self, user_rows: Tensor, pos: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """``count`` negatives per pair drawn uniformly from the user's remembered list head
        (``UserStateStore.pools``), leaving out the positive and deleted items; and which
        pairs had nothing to draw from (their rows are placeholders)."""
        pool = self.users.pools(user_rows)
        if pool.shape[1] == 0:
            return torch.zeros((pool.shape[0], count), dtype=torch.long, device=self.device), (
                torch.ones(pool.shape[0], dtype=torch.bool, device=self.device)
            )
        usable = (pool >= 0) & (pool != pos.unsqueeze(1))
        usable &= self.items.active[pool.clamp(min=0)]
        # Usable entries first (stable), then a uniform pick among each row's usable ones.
        order = torch.argsort((~usable).to(torch.int8), dim=1, stable=True)
        pool = pool.gather(1, order)
        have = usable.sum(dim=1)
        u = torch.rand((pool.shape[0], count), generator=self.head.generator).to(self.device)
        pick = (u * have.clamp(min=1).unsqueeze(1)).long().clamp(max=max(0, pool.shape[1] - 1))
        return pool.gather(1, pick).clamp(min=0), have == 0

    def _scored_negatives(
        self, user_rows: Tensor, vectors: Tensor, pos: Tensor, stand_in: Tensor | None, count: int
    ) -> Tensor:
        """Hard negatives for users without a remembered list: their top items scored now.
        From ANN candidates, ``stand_in`` (a sampled negative per pair; one is drawn when
        none is given) fills in where a user has too few eligible items."""
        if not self._ann_enabled():
            return self._hard_negatives(user_rows, vectors, pos, count)
        if stand_in is None:
            trend = self.trending.scores(self.items.capacity)
            stand_in = self.head.sample_negatives(self.items.active, len(pos), trend, count=1)[:, 0]
        return self._hard_negatives_ann(user_rows, vectors, pos, stand_in, count)

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
            self.items.image_view(),
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
        users = user_rows.cpu().numpy()
        touched, user = np.unique(users, return_inverse=True)
        tail_items, tail_weights = self.users.recent(torch.from_numpy(touched), n_recent)
        n_recent = tail_items.shape[1]
        # Each event's number among its user's events of this batch (batch order).
        order = np.argsort(user, kind="stable")
        per_user = np.bincount(user)
        nth = np.empty_like(user)
        nth[order] = np.arange(len(user)) - (np.cumsum(per_user) - per_user)[user[order]]
        # A user's sequence: their pre-batch tail (right-aligned, -1 padded), then this batch's
        # events; event number k sees the n_recent entries before it, positions k .. k+n-1.
        width = n_recent + int(per_user.max())
        seq_items = np.full((len(touched), width), -1, dtype=np.int64)
        seq_weights = np.zeros((len(touched), width), dtype=np.float64)
        seq_items[:, :n_recent] = tail_items.cpu().numpy()
        seq_weights[:, :n_recent] = tail_weights.cpu().numpy()
        item_np, weight_np = items.cpu().numpy(), weights.cpu().numpy().astype(np.float64)
        seq_items[user, n_recent + nth] = item_np
        seq_weights[user, n_recent + nth] = weight_np
        window = nth[:, None] + np.arange(n_recent)[None, :]
        self.cooc.observe_batch(
            item_np, weight_np, seq_items[user[:, None], window], seq_weights[user[:, None], window]
        )

    def _signals(self, user_rows: Sequence[int | None]) -> list[Tensor]:
        """The non-bilinear signals, each broadcastable to ``(users, num_rows)``, in [0, 1]."""
        n = self.items.num_rows
        out: list[Tensor] = []
        if self.cooc is not None:
            out.append(self.cooc.scores_many(*self._cooc_history(user_rows), n))
        if self.config.trend_signal:
            out.append(self._trend_signal(n).unsqueeze(0))
        return out

    def _trend_signal(self, n: int) -> Tensor:
        """The trending signal of every item row: log-scaled popularity in [0, 1]."""
        t = torch.log1p(self.trending.scores(n))
        return t / t.max().clamp(min=1e-9)

    def _recency(self, n: int) -> Tensor:
        """Co-occurrence weight of each of a user's last ``n`` items, oldest first:
        ``cooc_recency^k`` for the k-th most recent."""
        return self.config.cooc_recency ** torch.arange(
            n - 1, -1, -1, dtype=torch.float32, device=self.device
        )

    def _cooc_history(self, user_rows: Sequence[int | None]) -> tuple[Tensor, Tensor]:
        """Each user's last ``cooc_history`` item rows (``-1`` padded) and their weights in
        the co-occurrence score (event weight times recency; 0 for padding)."""
        n_recent = min(self.config.cooc_history, self.users.history_len)
        hist, w = self.users.recent(user_rows, n_recent)
        return hist, w * self._recency(n_recent)

    # -- ranking -------------------------------------------------------------------------

    def _item_matrix(self) -> Tensor:
        key = (self.items.version, self.head.steps)
        if self._x_cache is None or self._x_cache[0] != key:
            n = self.items.num_rows
            with torch.no_grad():
                x = self.head.item_vectors(self.items.embeddings, n, self.items.image_view())
            self._x_cache = (key, x)
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
        personal list in proportion to how much history they have (none: trending only); a
        profile counts as ``profile_weight`` events there, and its vector is the user's
        starting representation (``_start_vectors``).
        """
        if not user_ids:
            return []
        min_ev = self.config.min_events if min_events is None else min_events
        n = self.items.num_rows
        rows, vectors, counts, newest_ts, evidence, alpha = self._user_inputs(user_ids, min_ev)
        with torch.no_grad():
            top: tuple[Tensor, Tensor] | None = None
            if n:
                top, head = self._ranked(rows, vectors, counts, alpha, k)
                self._remember_pools(rows, head)
            because_all = self._because_many(rows, top[1]) if explain and top is not None else None
        # One conversion to Python lists for the whole batch, then plain loops.
        scores = top[0].tolist() if top is not None else [[] for _ in user_ids]
        picked = top[1].tolist() if top is not None else [[] for _ in user_ids]
        ids, version = self.items.ids, self.model_version
        out = []
        for i, (uid, count, event_ts, seen) in enumerate(
            zip(user_ids, counts.tolist(), newest_ts.tolist(), evidence.tolist(), strict=True)
        ):
            because = because_all[i] if because_all is not None else [None] * len(picked[i])
            items = [
                ScoredItem(ids[j], s, b)
                for j, s, b in zip(picked[i], scores[i], because, strict=True)
                if s != -math.inf  # fewer eligible items than k
            ]
            strategy = list_strategy(seen, count, min_ev)
            out.append(UserRecommendation(uid, items, strategy, version, event_ts))
        return out

    def _user_inputs(
        self, user_ids: Sequence[str], min_events: int
    ) -> tuple[list[int | None], Tensor, Tensor, Tensor, Tensor, Tensor]:
        """What ranking needs of each user: state rows (None: no state), the vectors the head
        scores them by (``_start_vectors``), event counts, newest event times, the evidence
        behind their list (events, plus ``profile_weight`` for a profile) and ``alpha``, the
        personal share of the list (``evidence / min_events``, at most 1)."""
        rows = [self.users.row(uid) for uid in user_ids]
        known = torch.tensor(
            [-1 if r is None else r for r in rows], dtype=torch.long, device=self.device
        )
        has_state = (known >= 0).unsqueeze(-1)
        vectors = torch.where(has_state, self.users.vectors[known.clamp(min=0)], 0.0)
        counts = torch.where(known >= 0, self.users.counts[known.clamp(min=0)], 0)
        newest_ts = torch.where(known >= 0, self.users.last_ts_ms[known.clamp(min=0)], 0)
        vectors, profiled = self._start_vectors(user_ids, vectors, counts)
        evidence = counts.float() + profiled.float() * max(0.0, self.config.profile_weight)
        alpha = (evidence / max(1, min_events)).clamp(max=1.0)
        return rows, vectors, counts, newest_ts, evidence, alpha

    def _ranked(
        self,
        rows: Sequence[int | None],
        vectors: Tensor,
        counts: Tensor,
        alpha: Tensor,
        k: int,
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Each user's list ``(relevance scores, item rows)``: the top ``k`` by relevance, or,
        with diversity or per-value caps, ``k`` picked greedily (``learner.rerank``) from the
        top ``rerank_pool``. Rows the rules exclude never enter the pool. A user the caps left
        short although the pool was full is re-ranked over the whole catalog (back-fill).

        Also returns the head of each user's relevance order (``_hard_pool()`` item rows,
        ``-1`` past the eligible ones): the hard-negative pool ``learn`` draws from next."""
        n = self.items.num_rows
        rules = self.rules
        allowed = self._allowed(n)
        capped = rules is not None and rules.has_caps
        rerank = self.config.diversity > 0 or capped
        pool = self.users.pool_len
        width = min(n, max(k, pool, self.config.rerank_pool if rerank else 0))
        top = self._top(rows, vectors, counts, alpha, width, allowed)
        head = top[1][:, :pool].masked_fill(~torch.isfinite(top[0][:, :pool]), -1)
        if not rerank:
            return (top[0][:, :k], top[1][:, :k]), head
        picked = self._rerank(*top, k)
        short = (torch.isfinite(picked[0]).sum(dim=1) < k) & torch.isfinite(top[0][:, -1])
        if width < n and bool(short.any()):
            redo = torch.nonzero(short).squeeze(-1)
            full = self._top_exact(
                [rows[i] for i in redo.tolist()],
                vectors[redo],
                counts[redo],
                alpha[redo],
                n,
                allowed,
            )
            again = self._rerank(*full, k)
            picked[0][redo], picked[1][redo] = again
        return picked, head

    def _hard_pool(self) -> int:
        """How many of a user's top items hard negatives are drawn from (0: none are)."""
        hard = round(self.config.head.negatives * self.config.hard_negatives)
        return self.config.hard_negative_pool if hard else 0

    def _remember_pools(self, rows: Sequence[int | None], head: Tensor) -> None:
        """Keep each known user's list head for the next ``learn`` (see ``_queue_pairs``)."""
        if not self.users.pool_len:
            return
        at = [i for i, r in enumerate(rows) if r is not None]
        if at:
            self.users.remember_pools([rows[i] for i in at], head[at])  # type: ignore[misc]

    def _allowed(self, n: int) -> Tensor | None:
        """``(n,)``: the rows the business rules let into any list; None without exclusions."""
        rules = self.rules
        return rules.allowed(n) if rules is not None and rules.rules.has_exclusions else None

    def _top(
        self,
        rows: Sequence[int | None],
        vectors: Tensor,
        counts: Tensor,
        alpha: Tensor,
        k: int,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        if self._ann_enabled():
            return self._top_ann(rows, vectors, counts, alpha, k, allowed)
        return self._top_exact(rows, vectors, counts, alpha, k, allowed)

    def _rerank(self, scores: Tensor, item_rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """MMR over the content vectors and the rules' caps, on each user's pool."""
        capped = self.rules is not None and self.rules.has_caps
        return greedy_select(
            scores,
            item_rows,
            k,
            diversity=self.config.diversity,
            vectors=self.items.embeddings[: self.items.num_rows],
            codes=self.rules.codes if capped and self.rules is not None else None,
            caps=self.rules.caps if capped and self.rules is not None else None,
        )

    def _ann_enabled(self) -> bool:
        """Whether the live catalog is large enough to rank from ANN candidates. An index built
        earlier is kept below the threshold: it catches up on its next use."""
        threshold = self.config.ann_min_items
        return threshold > 0 and self.items.num_active >= threshold

    def _ann_index(self) -> CatalogIndex:
        """The ANN index, built on first use and brought up to date on every use."""
        if self._ann is None:
            self._ann = CatalogIndex(self.config.ann)
        self._ann.sync(self.items, self.head)
        return self._ann

    def _top_exact(
        self,
        rows: Sequence[int | None],
        vectors: Tensor,
        counts: Tensor,
        alpha: Tensor,
        k: int,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` ``(scores, item rows)`` over the whole catalog, ``-inf`` where a user has
        fewer eligible items. Users go in chunks of at most ``_SCORE_ELEMENTS`` scores.
        ``allowed`` (rows the business rules let through) only masks: scores are unchanged."""
        n = self.items.num_rows
        live = self.items.active[:n]
        rankable = live if allowed is None else live & allowed
        trend = _minmax(self.trending.scores(n), live) if bool((alpha < 1).any()) else None
        step = max(1, _SCORE_ELEMENTS // n)
        values, indices = [], []
        everything = bool(rankable.all())
        for a in range(0, len(rows), step):
            part, b = rows[a : a + step], a + step
            scores = self._personal_scores(vectors[a:b], counts[a:b], part)
            mixing = torch.nonzero(alpha[a:b] < 1).squeeze(-1)
            if trend is not None and mixing.numel():
                scores[mixing] = _blend(scores[mixing], alpha[a:b][mixing], trend, live)
            if not everything:
                scores = scores.masked_fill(~rankable.unsqueeze(0), float("-inf"))
            who, what = self.users.exclusions(part)
            scores[who, what] = float("-inf")
            top = torch.topk(scores, k=min(k, n), dim=-1)
            values.append(top.values)
            indices.append(top.indices)
        return torch.cat(values), torch.cat(indices)

    def _top_ann(
        self,
        rows: Sequence[int | None],
        vectors: Tensor,
        counts: Tensor,
        alpha: Tensor,
        k: int,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` like :meth:`_top_exact`, scoring only candidates: each user's best rows by
        the bilinear score plus bias from the ANN index, and the best rows by each additive
        term on its own (bias, co-occurrence, trending), all re-scored exactly. The lists
        equal the exact ones whenever the candidates hold the exact top-``k`` (and, for users
        still blending in trending items, the row with the lowest personal score, which their
        min-max scaling uses).

        Users whose exclusions crowd the index's candidates out are scored exactly.
        """
        n, dev = self.items.num_rows, self.device
        # The signals of _signals, in its order: co-occurrence (per user, scored sparsely at
        # the candidates; None here) and trending (one row for everyone). A head with other
        # signals is scored exactly rather than approximated wrongly.
        signals: list[Tensor | None] = [None] if self.cooc is not None else []
        if self.config.trend_signal:
            signals.append(self._trend_signal(n))
        if self.head.n_signals != len(signals):
            return self._top_exact(rows, vectors, counts, alpha, k, allowed)
        index = self._ann_index()
        # Rows the rules exclude count as not live here: the index may still propose them,
        # and a user left with too few usable candidates is scored exactly.
        live = self.items.active[:n] if allowed is None else self.items.active[:n] & allowed
        trend = _minmax(self.trending.scores(n), live) if bool((alpha < 1).any()) else None
        who, _ = self.users.exclusions(rows)
        n_excl = torch.bincount(who.cpu(), minlength=len(rows))
        width = k + self.config.ann.candidates + int(n_excl.max())
        # The best live rows by each user-independent term (the bias, trending) are the same
        # for every user. The index ranks by bilinear + bias, but a popular item far from a
        # user's taste sits in a list the user's query does not probe: the bias list finds it.
        tops: list[Tensor] = []
        for term in [self.head.bias[:n], *(sig for sig in signals if sig is not None)]:
            best = torch.topk(term.masked_fill(~live, float("-inf")), min(width, n))
            tops.append(best.indices[torch.isfinite(best.values)])
        kk = min(k, n)
        values = torch.full((len(rows), kk), float("-inf"), device=dev)
        indices = torch.full((len(rows), kk), -1, dtype=torch.long, device=dev)
        exact: list[Tensor] = []
        # Users with similar numbers of exclusions share a chunk, and so a search width.
        order = torch.argsort(n_excl, stable=True).to(dev)
        for a in range(0, len(rows), _ANN_CHUNK):
            sel = order[a : a + _ANN_CHUNK]
            vals, idxs, ok = self._ann_chunk(
                index,
                [rows[i] for i in sel.tolist()],
                vectors[sel],
                counts[sel],
                alpha[sel],
                k,
                signals,
                tops,
                trend,
                live,
            )
            values[sel, : vals.shape[1]] = vals
            indices[sel, : idxs.shape[1]] = idxs
            exact.append(sel[~ok])
        redo = torch.cat(exact)
        if redo.numel():
            vals, idxs = self._top_exact(
                [rows[i] for i in redo.tolist()],
                vectors[redo],
                counts[redo],
                alpha[redo],
                k,
                allowed,
            )
            values[redo], indices[redo] = vals, idxs
        return values, indices

    def _ann_chunk(
        self,
        index: CatalogIndex,
        rows: Sequence[int | None],
        vectors: Tensor,
        counts: Tensor,
        alpha: Tensor,
        k: int,
        signals: list[Tensor | None],
        tops: list[Tensor],
        trend: Tensor | None,
        live: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk of :meth:`_top_ann`: ``(scores, item rows, enough candidates?)``."""
        n, dev, u = self.items.num_rows, self.device, len(rows)
        extra = self.config.ann.candidates
        base = torch.arange(u, device=dev).unsqueeze(-1) * n  # key = position * n + item row
        who, what = self.users.exclusions(rows)
        excluded = torch.unique(who * n + what)
        n_excl = torch.bincount(excluded // n, minlength=u)
        n_excl_live = torch.bincount(excluded // n, weights=live[excluded % n].float(), minlength=u)
        width = k + extra + int(n_excl.max())
        # Co-occurrence candidates are exact (no index in between) and each user's own, so they
        # get no margin for approximation: the top 2k by that signal alone, beyond exclusions.
        narrow = 2 * k + int(n_excl.max())

        q = self.head.query(vectors)
        w = self.head.mixing(counts)
        queries = mips_queries(q, w[:, 0])
        found = index.search(queries, width).to(dev)
        parts = [found, *(top[:width].expand(u, -1) for top in tops)]
        cooc: tuple[Tensor, Tensor] | None = None
        if any(sig is None for sig in signals):
            cooc = self._cooc_sparse(rows)
            parts.append(_top_per_row(*cooc, n, u, narrow, live))
        blending = (alpha < 1) & (alpha > 0)
        if trend is not None and bool(blending.any()):
            low = torch.full((u, _LOW_CANDIDATES), -1, dtype=torch.long, device=dev)
            low[blending] = index.search(-queries[blending], _LOW_CANDIDATES).to(dev)
            parts.append(low)
        cand = _distinct_rows(torch.cat(parts, dim=1))
        safe = cand.clamp(min=0)
        valid = (cand >= 0) & live[safe]

        # The terms of _personal_scores, at the candidates only. Candidates repeat across the
        # chunk's users (popular items, shared topics), so their vectors are gathered once and
        # scored with one matrix product, then each user takes their own columns: gathering a
        # vector per (user, candidate) pair from a large catalog costs far more than the product.
        distinct, where = torch.unique(safe.reshape(-1), return_inverse=True)
        if self.head.fusion is None:
            x = self.items.embeddings.index_select(0, distinct).add_(
                self.head.delta.index_select(0, distinct)
            )
        else:
            x = self.head.vectors_at(self.items.embeddings, distinct, self.items.image_view())
        scores = torch.addmm(self.head.bias[distinct].unsqueeze(0), q * w[:, :1], x.T)
        scores = scores.gather(1, where.view(u, -1))
        for s_i, sig in enumerate(signals):
            if sig is not None:
                value = sig[safe]
            else:
                assert cooc is not None
                value = _lookup(cooc[0], cooc[1], base + safe)
            scores = scores + w[:, 1 + s_i : 2 + s_i] * value
        mixing = torch.nonzero(alpha < 1).squeeze(-1)
        if trend is not None and mixing.numel():
            p, ok = scores[mixing], valid[mixing]
            lo = p.masked_fill(~ok, float("inf")).amin(dim=1, keepdim=True)
            hi = p.masked_fill(~ok, float("-inf")).amax(dim=1, keepdim=True)
            a = alpha[mixing].unsqueeze(-1)
            mm = (p - lo) / (hi - lo).clamp(min=1e-12)
            scores[mixing] = a * mm + (1 - a) * trend[safe[mixing]]
        scores = scores.masked_fill(~valid | torch.isin(base + safe, excluded), float("-inf"))
        top = torch.topk(scores, min(k, scores.shape[1]), dim=-1)

        # Enough eligible rows from the index itself, or the margin is gone: score exactly.
        f_safe = found.clamp(min=0)
        usable = (found >= 0) & live[f_safe] & ~torch.isin(base + f_safe, excluded)
        need = torch.clamp(int(live.sum()) - n_excl_live.long(), max=k + extra)
        return top.values, cand.gather(1, top.indices), usable.sum(dim=1) >= need

    def _cooc_sparse(self, user_rows: Sequence[int | None]) -> tuple[Tensor, Tensor]:
        """The co-occurrence signal of :meth:`_signals` at its non-zero entries only, as sorted
        keys ``position * num_rows + item row`` and their values: a user's non-zero items are
        the neighbours of their recent history, a few thousand where a dense row is the whole
        catalog. Mirrors ``CoOccurrence.scores_many`` term for term."""
        assert self.cooc is not None
        cooc, n, dev = self.cooc, self.items.num_rows, self.device
        hist, a = self._cooc_history(user_rows)
        present = hist >= 0
        flat = present.reshape(-1).nonzero().squeeze(-1)
        hist_rows = hist.reshape(-1)[flat]
        user = flat // hist.shape[1]
        scale = a.reshape(-1)[flat] / cooc.mass[hist_rows].sqrt().clamp(min=1e-9)
        nbr = cooc.idx[hist_rows]  # (P, M); empty slots are -1
        listed = nbr >= 0
        keys = (user.unsqueeze(-1) * n + nbr)[listed]
        contrib = (cooc.weight[hist_rows] * scale.unsqueeze(-1))[listed]
        keys, inverse = torch.unique(keys, return_inverse=True)
        sums = torch.zeros(keys.numel(), device=dev).index_add_(0, inverse, contrib)
        item = keys % n
        inv_norm = 1.0 / cooc.mass[item].sqrt().clamp(min=1e-9)
        values = sums * torch.where(cooc.mass[item] > 0, inv_norm, 0.0)
        return keys, values / a.sum(dim=1).clamp(min=1e-9)[keys // n]

    def _because_many(
        self, rows: Sequence[int | None], item_rows: Tensor
    ) -> list[list[str | None]]:
        """For each recommended row, the history item that contributed most to its score: its
        share of the bilinear score (by decayed event weight) plus its share of the
        co-occurrence score (by recency weight), each with the weight the head gives that
        signal for this user. ``item_rows`` is ``(B, K)``, one list per user row; ``None``
        rows have no history, so no ``because``. The whole batch is a few tensor operations.
        """
        b, k = item_rows.shape
        if b == 0 or k == 0:
            return [[None] * k for _ in range(b)]
        hist, w_raw, ts_ms = self.users.recent(rows, self.users.history_len, with_times=True)
        # Histories are right-aligned and the cost below is per column, so users go in groups
        # of similar history length, each scored over its own longest history only: most users
        # have short histories, and one long one would otherwise widen everyone's.
        length = (hist >= 0).sum(dim=1)
        best = torch.full((b, k), -1, dtype=torch.long, device=self.device)
        width = torch.clamp(
            2 ** torch.ceil(torch.log2(length.clamp(min=1).float())), max=hist.shape[1]
        )
        for h_len in torch.unique(width[length > 0]).tolist():
            group = torch.nonzero((width == h_len) & (length > 0)).squeeze(-1)
            h = int(h_len)
            best[group] = self._because_group(
                hist[group, -h:], w_raw[group, -h:], ts_ms[group, -h:], item_rows[group]
            )
        picked = best.tolist()
        ids = self.items.ids
        return [[ids[r] if r >= 0 else None for r in picked[i]] for i in range(b)]

    def _because_group(
        self, hist: Tensor, w_raw: Tensor, ts_ms: Tensor, item_rows: Tensor
    ) -> Tensor:
        """:meth:`_because_many` for users whose (right-aligned) histories fit ``hist``'s
        columns: the best history item row for each recommended row, ``(B, K)``."""
        b, k = item_rows.shape
        h_len = hist.shape[1]
        present = hist >= 0
        length = present.sum(dim=1)
        newest = ts_ms.masked_fill(~present, torch.iinfo(torch.int64).min).max(dim=1).values
        age_s = (newest.unsqueeze(1) - ts_ms).double() / 1000.0
        w = (w_raw * torch.exp2(-age_s / self.config.user_half_life_s).float()) * present
        mix = self.head.mixing(length)  # (B, 1 + signals)
        cols = item_rows.clamp(min=0, max=max(0, self.items.num_rows - 1))
        # Only the rows this batch names: e_v + δ_v of history items and recommended items.
        distinct, where = torch.unique(
            torch.cat([hist.clamp(min=0).reshape(-1), cols.reshape(-1)]), return_inverse=True
        )
        x = self.head.vectors_at(self.items.embeddings, distinct, self.items.image_view())
        q = self.head.query(x)[where[: hist.numel()]].view(b, h_len, -1)  # history as users
        bilinear = torch.bmm(q, x[where[hist.numel() :]].view(b, k, -1).transpose(1, 2))
        contrib = (mix[:, :1] * w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)).unsqueeze(
            -1
        ) * bilinear
        if self.cooc is not None:
            # The co-occurrence weights of _cooc_history, on the newest columns of the ring.
            n_recent = min(self.config.cooc_history, h_len)
            a = torch.zeros_like(w_raw)
            a[:, h_len - n_recent :] = w_raw[:, h_len - n_recent :] * self._recency(n_recent)
            sim = self.cooc.similarity_many(torch.where(a > 0, hist, -1), cols)  # (B, H, K)
            share = mix[:, 1:2] * a / a.sum(dim=1, keepdim=True).clamp(min=1e-9)
            contrib = contrib + share.unsqueeze(-1) * sim
        contrib = contrib.masked_fill(~present.unsqueeze(-1), float("-inf"))
        return hist.gather(1, contrib.argmax(dim=1))  # (B, K) history item rows


def list_strategy(evidence: float, count: int, min_events: int) -> Strategy:
    """What a user's list is: ``popular`` without any evidence (no events, no profile),
    ``personal`` from ``min_events`` events on, ``blend`` in between.

    Examples
    --------
    >>> list_strategy(0.0, 0, 3), list_strategy(1.0, 0, 3), list_strategy(3.0, 3, 3)
    ('popular', 'blend', 'personal')
    """
    return "popular" if evidence <= 0 else "personal" if count >= min_events else "blend"


def _minmax(v: Tensor, live: Tensor) -> Tensor:
    """Scale ``v`` to [0, 1] over the live entries."""
    if not bool(live.any()):
        return torch.zeros_like(v)
    lo, hi = v[live].min(), v[live].max()
    return (v - lo) / (hi - lo).clamp(min=1e-12)


def _row_range(m: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's ``(min, max)`` over the live columns, as ``(B, 1)`` tensors."""
    lo, hi = torch.aminmax(m if bool(live.all()) else m[:, live], dim=1, keepdim=True)
    return lo, hi


def _blend(personal: Tensor, alpha: Tensor, trend: Tensor, live: Tensor) -> Tensor:
    """``alpha * minmax(personal) + (1 - alpha) * trend`` per row, in place of ``personal``:
    a cold user's list, their own scores scaled to [0, 1] over the live items and mixed with
    trending (also in [0, 1]) by how much history they have.

    Examples
    --------
    >>> _blend(torch.tensor([[2.0, 4.0, 3.0]]), torch.tensor([0.5]),
    ...        torch.tensor([1.0, 0.0, 0.0]), torch.ones(3, dtype=torch.bool)).tolist()
    [[0.5, 0.5, 0.25]]
    """
    if not bool(live.any()):
        return torch.outer(1 - alpha, trend)
    lo, hi = _row_range(personal, live)
    scale = alpha.unsqueeze(-1) / (hi - lo).clamp(min=1e-12)
    return personal.sub_(lo).mul_(scale).addr_(1 - alpha, trend)


def _distinct_rows(rows: Tensor) -> Tensor:
    """Each row's entries sorted, with repeats (and negatives, which mean none) set to ``-1``.

    Examples
    --------
    >>> _distinct_rows(torch.tensor([[3, 1, 3, -1], [2, 2, 0, 5]])).tolist()
    [[-1, 1, 3, -1], [0, 2, -1, 5]]
    """
    s = torch.sort(rows, dim=1).values
    repeat = torch.zeros_like(s, dtype=torch.bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]
    return s.masked_fill(repeat | (s < 0), -1)


def _lookup(keys: Tensor, values: Tensor, wanted: Tensor) -> Tensor:
    """``values`` at ``wanted`` keys (``keys`` sorted and distinct), 0 where absent.

    Examples
    --------
    >>> _lookup(torch.tensor([2, 5]), torch.tensor([0.5, 1.5]), torch.tensor([[5, 3, 2]]))
    tensor([[1.5000, 0.0000, 0.5000]])
    """
    if keys.numel() == 0:
        return torch.zeros(wanted.shape, device=values.device)
    at = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
    return torch.where(keys[at] == wanted, values[at], 0.0)


def _top_per_row(
    keys: Tensor, values: Tensor, n: int, users: int, width: int, live: Tensor
) -> Tensor:
    """For entries keyed ``user * n + row``: each user's ``width`` live rows of largest positive
    value, best first, as a ``(users, width)`` tensor padded with ``-1``.

    Examples
    --------
    >>> keys = torch.tensor([1, 2, 3, 4 + 0, 4 + 2])  # n = 4: user 0 rows 1-3, user 1 rows 0, 2
    >>> _top_per_row(keys, torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0]), 4, 2, 2,
    ...              torch.ones(4, dtype=torch.bool)).tolist()
    [[2, 3], [0, -1]]
    """
    out = torch.full((users, width), -1, dtype=torch.long, device=keys.device)
    keep = (values > 0) & live[keys % n]
    keys, values = keys[keep], values[keep]
    user = keys // n
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(user[by_value], stable=True)]
    user = user[order]
    count = torch.bincount(user, minlength=users)
    rank = torch.arange(order.numel(), device=keys.device) - (torch.cumsum(count, 0) - count)[user]
    take = rank < width
    out[user[take], rank[take]] = keys[order][take] % n
    return out
