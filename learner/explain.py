"""Why an item scores what it does for a user: the recommender's score taken apart.

The personal score of item ``v`` for user ``u`` is a sum of terms (``learner/recommender.py``)::

    w_b(n) * q_u · e_v          content similarity (frozen encoder vectors, through the head)
  + w_b(n) * q_u · δ_v          learned offset of the item (collaborative)
  + b_v                         learned bias of the item
  + w_c(n) * cooc(u, v)         co-occurrence with the user's recent items
  + w_t(n) * trend(v)           trending popularity

with ``q_u`` the head's query of the user's vector and ``w(n)`` the head's mixing weights for a
user with ``n`` events. A user with fewer than ``min_events`` events gets
``alpha * minmax(personal) + (1 - alpha) * minmax(trending)`` instead, ``alpha = n / min_events``.
Each history item's contribution is its share of the bilinear term (by decayed event weight)
plus its share of the co-occurrence term: the largest is the ``because`` of published lists.

Examples
--------
>>> from learner.recommender import Recommender
>>> from learner.types import Event, Item
>>> class Bag:  # a toy encoder: one dimension per word
...     name, dim, device = "bag", 4, torch.device("cpu")
...     words = ["space", "war", "love", "paris"]
...     def encode(self, texts):
...         return torch.nn.functional.normalize(torch.tensor(
...             [[float(w in t) for w in self.words] for t in texts]) + 1e-3, dim=-1)
>>> rec = Recommender(Bag())
>>> _ = rec.upsert_items([Item("a", "space war"), Item("b", "space"), Item("c", "love paris")])
>>> _ = rec.learn([Event("e1", "u", "a", "click", None, 1_000)])
>>> ex = explain(rec, "u", "b")
>>> ex.events, ex.strategy, ex.excluded, [h.item_id for h in ex.history]
(1, 'blend', None, ['a'])
>>> round(sum(p.value for p in ex.parts), 5) == round(ex.personal, 5)
True
>>> explain(rec, "u", "a").excluded  # already consumed: never recommended to this user
'consumed'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from learner.exceptions import FreshrecError

if TYPE_CHECKING:
    from learner.recommender import Recommender

__all__ = ["Explanation", "HistoryContribution", "Part", "UnknownItem", "explain"]


class UnknownItem(FreshrecError, KeyError):
    """The item is not in the live catalog."""


@dataclass(frozen=True)
class Part:
    """One additive term of the personal score."""

    name: str
    value: float
    note: str = ""


@dataclass(frozen=True)
class HistoryContribution:
    """What one history item adds to the item's score (through the bilinear term by its
    decayed weight, and through co-occurrence by its recency weight)."""

    item_id: str
    total: float
    content: float
    cooccurrence: float
    weight: float  # the event's weight after decay


@dataclass(frozen=True)
class Explanation:
    """The score of ``item_id`` for ``user_id`` taken apart (see the module docstring)."""

    user_id: str
    item_id: str
    events: int
    strategy: str  # personal, blend or popular: what the user's published list is
    alpha: float  # share of the personal score in the final one (1: personal only)
    parts: list[Part]
    personal: float  # the sum of parts
    trending_scaled: float  # the item's trending score min-max scaled over the catalog
    final: float | None  # the score a published list would show; None if excluded
    rank: int | None  # 1-based by relevance among the items the user can get; None if excluded
    eligible: int  # how many items the user can be recommended
    excluded: str | None  # "consumed" (the user has it) or "rule" (a business rule bans it)
    history: list[HistoryContribution] = field(default_factory=list)
    model_version: str = ""

    @property
    def because(self) -> str | None:
        """The history item a published list names for this item."""
        return self.history[0].item_id if self.history else None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        from dataclasses import asdict

        out = asdict(self)
        out["because"] = self.because
        return out


def explain(rec: Recommender, user_id: str, item_id: str, top: int = 5) -> Explanation:
    """Take apart the score of ``item_id`` for ``user_id`` on ``rec``'s current state.

    Raises :class:`UnknownItem` if the item is not in the live catalog. A user without state
    is explained as a new user (trending only). ``top`` history items are listed, largest
    contribution first.
    """
    col = rec.items.find(item_id)
    if col is None:
        raise UnknownItem(f"item {item_id!r} is not in the catalog")
    users = rec.users
    n = rec.items.num_rows
    cfg = rec.config
    with torch.no_grad():
        # The same inputs recommend() ranks by: profile blend and popularity share included.
        rows, vector, counts, _, evidence, alphas = rec._user_inputs([user_id], cfg.min_events)
        row, count, alpha = rows[0], int(counts[0]), float(alphas[0])
        mix = rec.head.mixing(counts)[0]
        q = rec.head.query(vector)[0]
        e = rec.items.embeddings[col]
        # With image fusion the content vector is text + gated image; the image's share is a
        # part of its own (zero for items without an image, absent without an image encoder).
        images = rec.items.image_view()
        e_fused = rec.head.content(rec.items.embeddings, torch.tensor([col]), images)[0]
        rec.head.ensure_capacity(n)
        delta = rec.head.delta[col]
        names = []
        signals = rec._signals([row]) if rec.head.n_signals else []
        if rec.cooc is not None:
            names.append("co-occurrence")
        if cfg.trend_signal:
            names.append("trending")
        parts = [
            Part("content similarity", float(mix[0] * (q @ e)), "user · item content vectors"),
            Part("learned offset", float(mix[0] * (q @ delta)), "the item's collaborative offset"),
            Part("item bias", float(rec.head.bias[col])),
        ]
        if rec.head.fusion is not None:
            parts.insert(
                1,
                Part(
                    "image",
                    float(mix[0] * (q @ (e_fused - e))),
                    "user · the item's gated, projected image vector",
                ),
            )
        for s_i, (name, signal) in enumerate(zip(names, signals, strict=True)):
            value = signal.expand(1, -1)[0, col] if signal.dim() == 2 else signal[col]
            parts.append(Part(name, float(mix[1 + s_i] * value)))
        personal_all = rec._personal_scores(vector, counts, [row])[0]
        live = rec.items.active[:n]
        from learner.recommender import _minmax

        trend = _minmax(rec.trending.scores(n), live)
        if alpha < 1.0:
            final_all = alpha * _minmax(personal_all, live) + (1 - alpha) * trend
        else:
            final_all = personal_all.clone()
        final_all = final_all.masked_fill(~live, -math.inf)
        excluded = None
        if row is not None:
            _, what = users.exclusions([row])
            final_all[what] = -math.inf
            if bool((what == col).any()):
                excluded = "consumed"
        allowed = rec._allowed(n)
        if allowed is not None:
            final_all = final_all.masked_fill(~allowed, -math.inf)
            if excluded is None and not bool(allowed[col]):
                excluded = "rule"
        eligible = int(torch.isfinite(final_all).sum())
        final = float(final_all[col]) if excluded is None else None
        rank = None if excluded else int((final_all > final_all[col]).sum()) + 1
        history = _history(rec, row, col, top) if row is not None else []
    from learner.recommender import list_strategy

    return Explanation(
        user_id=user_id,
        item_id=item_id,
        events=count,
        strategy=list_strategy(float(evidence[0]), count, cfg.min_events),
        alpha=alpha,
        parts=parts,
        personal=float(personal_all[col]),
        trending_scaled=float(trend[col]),
        final=final,
        rank=rank,
        eligible=eligible,
        excluded=excluded,
        history=history,
        model_version=rec.model_version,
    )


def _history(rec: Recommender, row: int, col: int, top: int) -> list[HistoryContribution]:
    """Each history item's contribution to item ``col`` for user ``row``, as
    ``Recommender._because_many`` weighs it, largest first."""
    users, cfg = rec.users, rec.config
    hist, w_raw, ts_ms = users.recent([row], users.history_len, with_times=True)
    present = hist[0] >= 0
    if not bool(present.any()):
        return []
    h, w_raw, ts = hist[0][present], w_raw[0][present], ts_ms[0][present]
    age_s = (ts.max() - ts).double() / 1000.0
    w = w_raw * torch.exp2(-age_s / cfg.user_half_life_s).float()
    mix = rec.head.mixing(torch.tensor([int(present.sum())], device=rec.device))[0]
    images = rec.items.image_view()
    x_hist = rec.head.vectors_at(rec.items.embeddings, h, images)
    x_item = rec.head.vectors_at(rec.items.embeddings, torch.tensor([col]), images)[0]
    bilinear = rec.head.query(x_hist) @ x_item
    content = mix[0] * w / w.sum().clamp(min=1e-12) * bilinear
    cooc = torch.zeros_like(content)
    if rec.cooc is not None:
        n_recent = min(cfg.cooc_history, int(h.numel()))
        a = torch.zeros_like(w_raw)
        a[-n_recent:] = w_raw[-n_recent:] * rec._recency(n_recent)
        sim = rec.cooc.similarity_many(
            torch.where(a > 0, h, -1).unsqueeze(0), torch.tensor([[col]], device=rec.device)
        )[0, :, 0]
        cooc = mix[1] * a / a.sum().clamp(min=1e-9) * sim
    total = content + cooc
    order = torch.argsort(total, descending=True, stable=True)[:top].tolist()
    ids = rec.items.ids
    return [
        HistoryContribution(
            ids[int(h[i])], float(total[i]), float(content[i]), float(cooc[i]), float(w[i])
        )
        for i in order
    ]
