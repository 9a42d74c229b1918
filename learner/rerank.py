"""Greedy re-ranking of a candidate pool: MMR diversity and per-value caps, a batch at a time.

Maximal Marginal Relevance (Carbonell and Goldstein, 1998) builds each list one item at a time,
taking the candidate that maximises

    (1 - lambda) * relevance - lambda * max cosine similarity to the items already taken,

where relevance is the model's score min-max scaled to [0, 1] over the user's pool and the
similarity is the cosine of the items' content (encoder) vectors. With ``lambda = 0`` the
selection is the pool in relevance order, i.e. plain top-k. Caps (``learner.rules``) are
constraints of the same greedy loop: a candidate with a value that already reached its cap is
not eligible, so the next eligible one back-fills the list.

Every user of a batch moves in lock-step: ``k`` steps of a few ``(users, pool)`` tensor
operations, with no Python loop over users or items.

Examples
--------
>>> import torch
>>> vectors = torch.nn.functional.normalize(torch.tensor(
...     [[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]), dim=-1)   # rows 0 and 1 near-duplicates
>>> scores, rows = torch.tensor([[3.0, 2.9, 2.0]]), torch.tensor([[0, 1, 2]])
>>> greedy_select(scores, rows, 2)[1].tolist()
[[0, 1]]
>>> greedy_select(scores, rows, 2, diversity=0.5, vectors=vectors)[1].tolist()
[[0, 2]]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["greedy_select"]

# Users per chunk: the pool's content vectors (users x pool x dim floats) are gathered at once.
_GATHER_ELEMENTS = 1 << 24
# Catalogs up to this many times the pool are compared with every item at each step.
_DENSE_RATIO = 4


def greedy_select(
    scores: Tensor,
    rows: Tensor,
    k: int,
    *,
    diversity: float = 0.0,
    vectors: Tensor | None = None,
    codes: Tensor | None = None,
    caps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick ``k`` of each user's candidates greedily; returns ``(scores, rows)``, ``(B, k)``.

    Parameters
    ----------
    scores
        ``(B, P)`` relevance of each candidate, ``-inf`` where there is none (not eligible).
    rows
        ``(B, P)`` item rows of the candidates.
    k
        List length; a user with fewer eligible candidates gets ``-inf`` / ``-1`` at the end.
    diversity
        MMR's lambda in [0, 1]; 0 is plain relevance order.
    vectors
        ``(items, d)`` content vectors of unit length (the encoder's output), needed when
        ``diversity > 0``: their dot product is the cosine.
    codes, caps
        ``(items, M)`` capped value codes per row (``-1`` padding) and ``(V,)`` each code's
        cap: a candidate is eligible while each of its codes was taken fewer times than its cap.

    The returned scores are the relevance scores of the chosen items (not the MMR objective),
    in the order chosen.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError("diversity must lie in [0, 1]")
    b, p = scores.shape
    if diversity > 0 and vectors is None:
        raise ValueError("diversity needs the items' vectors")
    # A small catalog: each step's similarities to every item are one matrix product, cheaper
    # than gathering each user's pool vectors (a memory-bound batch of matrix-vector products).
    dense = vectors is not None and vectors.shape[0] <= _DENSE_RATIO * p
    d = vectors.shape[1] if vectors is not None and diversity > 0 and not dense else 1
    step = max(1, _GATHER_ELEMENTS // max(1, p * d))
    parts = [
        _select_chunk(scores[a : a + step], rows[a : a + step], k, diversity, vectors, codes, caps)
        for a in range(0, b, step)
    ]
    if not parts:
        return scores[:, :0], rows[:, :0]
    return torch.cat([v for v, _ in parts]), torch.cat([r for _, r in parts])


def _select_chunk(
    scores: Tensor,
    rows: Tensor,
    k: int,
    diversity: float,
    vectors: Tensor | None,
    codes: Tensor | None,
    caps: Tensor | None,
) -> tuple[Tensor, Tensor]:
    b, p = scores.shape
    dev = scores.device
    valid = torch.isfinite(scores)
    safe = rows.clamp(min=0)
    lo = scores.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    hi = scores.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    relevance = ((scores - lo) / (hi - lo).clamp(min=1e-12)).masked_fill(~valid, 0.0)
    objective = (1.0 - diversity) * relevance
    x: Tensor | None = None
    max_sim = torch.zeros((b, p), device=dev)
    dense = False
    if diversity > 0:
        assert vectors is not None
        dense = vectors.shape[0] <= _DENSE_RATIO * p
        x = vectors if dense else vectors[safe]  # (items, d) or (B, P, d)
        # (d, items) laid out for the product: a transposed view made each product 5x slower.
        xt = x.T.contiguous() if dense else x
        max_sim = torch.full((b, p), -1.0, device=dev)  # nothing taken yet: no penalty
    capped = codes is not None and caps is not None and caps.numel() > 0
    if capped:
        assert codes is not None and caps is not None
        cand_codes = codes[safe]  # (B, P, M)
        has_code = cand_codes >= 0
        cand_codes = cand_codes.clamp(min=0)
        cand_caps = caps[cand_codes]
        counts = torch.zeros((b, int(caps.numel())), dtype=torch.long, device=dev)
    open_ = valid.clone()
    out_scores = torch.full((b, k), float("-inf"), device=dev)
    out_rows = torch.full((b, k), -1, dtype=torch.long, device=dev)
    arange = torch.arange(b, device=dev)
    for t in range(min(k, p)):
        eligible = open_
        if capped:
            taken = counts.gather(1, cand_codes.view(b, -1)).view(cand_codes.shape)
            eligible = eligible & ~((taken >= cand_caps) & has_code).any(dim=-1)
        value = objective
        if x is not None:
            # The first pick has no penalty (-1 everywhere shifts every candidate alike).
            value = objective - diversity * max_sim
        value = value.masked_fill(~eligible, float("-inf"))
        best = value.argmax(dim=1)
        ok = eligible[arange, best]
        out_scores[:, t] = torch.where(ok, scores[arange, best], float("-inf"))
        out_rows[:, t] = torch.where(ok, rows[arange, best], -1)
        open_[arange, best] = open_[arange, best] & ~ok
        if x is not None and dense:
            chosen = x[rows[arange, best].clamp(min=0)]  # (B, d)
            max_sim = torch.maximum(max_sim, (chosen @ xt).gather(1, safe))
        elif x is not None:
            sim = torch.bmm(x, x[arange, best].unsqueeze(-1)).squeeze(-1)
            max_sim = torch.maximum(max_sim, sim)
        if capped:
            picked = cand_codes[arange, best]  # (B, M)
            add = (has_code[arange, best] & ok.unsqueeze(1)).long()
            counts.scatter_add_(1, picked, add)
        if not bool(ok.any()):
            break
    return out_scores, out_rows
