"""Specifications of learner.rerank: greedy MMR selection with per-value caps, batched."""

from __future__ import annotations

import pytest
import torch

from learner.rerank import greedy_select


def pool(users: int = 6, size: int = 40, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random candidate pools, sorted best first as topk returns them, and item vectors."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(size * 2, dim, generator=g), dim=-1)
    scores = torch.randn(users, size, generator=g)
    rows = torch.stack([torch.randperm(size * 2, generator=g)[:size] for _ in range(users)])
    scores, order = torch.sort(scores, dim=1, descending=True)
    return scores, rows.gather(1, order), vectors


def test_lambda_zero_without_caps_is_the_pool_in_relevance_order() -> None:
    scores, rows, vectors = pool()
    values, picked = greedy_select(scores, rows, 10, diversity=0.0, vectors=vectors)
    assert torch.equal(picked, rows[:, :10])
    assert torch.equal(values, scores[:, :10])


def test_mmr_takes_a_dissimilar_item_over_a_near_duplicate_of_the_first() -> None:
    vectors = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1
    )
    scores = torch.tensor([[4.0, 3.9, 3.0, 1.0]])
    rows = torch.tensor([[0, 1, 2, 3]])
    assert greedy_select(scores, rows, 3, diversity=0.0, vectors=vectors)[1].tolist() == [[0, 1, 2]]
    assert greedy_select(scores, rows, 3, diversity=0.5, vectors=vectors)[1].tolist() == [[0, 2, 3]]


def test_higher_lambda_gives_lists_whose_items_are_less_alike() -> None:
    scores, rows, vectors = pool(users=20, size=60, dim=6)

    def mean_similarity(picked: torch.Tensor) -> float:
        x = vectors[picked]  # (B, k, d)
        sim = torch.bmm(x, x.transpose(1, 2))
        k = picked.shape[1]
        return float(
            (sim.sum() - sim.diagonal(dim1=1, dim2=2).sum()) / (picked.shape[0] * k * (k - 1))
        )

    sims = [
        mean_similarity(greedy_select(scores, rows, 10, diversity=lam, vectors=vectors)[1])
        for lam in (0.0, 0.3, 0.7)
    ]
    assert sims[0] > sims[1] > sims[2]


def test_the_first_pick_is_always_the_most_relevant_and_scores_are_relevance() -> None:
    scores, rows, vectors = pool()
    values, picked = greedy_select(scores, rows, 5, diversity=0.9, vectors=vectors)
    assert torch.equal(picked[:, 0], rows[:, 0])
    for u in range(rows.shape[0]):
        at = {int(r): float(s) for r, s in zip(rows[u], scores[u], strict=True)}
        assert [at[int(r)] for r in picked[u]] == values[u].tolist()


def test_a_batch_picks_what_each_user_alone_would() -> None:
    scores, rows, vectors = pool(users=5)
    codes = torch.randint(-1, 4, (80, 2), generator=torch.Generator().manual_seed(3))
    caps = torch.tensor([2, 1, 3, 2])
    kw = {"diversity": 0.4, "vectors": vectors, "codes": codes, "caps": caps}
    together = greedy_select(scores, rows, 8, **kw)[1]  # type: ignore[arg-type]
    for u in range(5):
        alone = greedy_select(scores[u : u + 1], rows[u : u + 1], 8, **kw)[1]  # type: ignore[arg-type]
        assert torch.equal(alone[0], together[u])


def test_caps_hold_per_value_and_the_next_eligible_items_back_fill() -> None:
    # Rows 0-5 carry value 0 ("Drama"); row 3 also value 1 ("War"); rows 6-9 carry nothing.
    codes = torch.full((10, 2), -1)
    codes[:6, 0] = 0
    codes[3, 1] = 1
    caps = torch.tensor([2, 5])
    scores = torch.linspace(10, 1, 10).unsqueeze(0)
    rows = torch.arange(10).unsqueeze(0)
    _, picked = greedy_select(scores, rows, 6, codes=codes, caps=caps)
    assert picked.tolist() == [[0, 1, 6, 7, 8, 9]]  # two Drama, then the rest in order


def test_an_item_with_two_values_fits_only_while_both_are_under_their_caps() -> None:
    codes = torch.tensor([[0, -1], [1, -1], [0, 1], [2, -1]])
    caps = torch.tensor([1, 1, 1])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    _, picked = greedy_select(scores, torch.arange(4).unsqueeze(0), 4, codes=codes, caps=caps)
    assert picked.tolist() == [[0, 1, 3, -1]]  # row 2 (values 0 and 1) never fits


def test_fewer_eligible_candidates_than_k_leave_the_tail_empty() -> None:
    scores = torch.tensor([[2.0, 1.0, float("-inf")]])
    values, picked = greedy_select(scores, torch.tensor([[5, 6, 0]]), 4)
    assert picked.tolist() == [[5, 6, -1, -1]]
    assert values[0, 2:].tolist() == [float("-inf")] * 2


def test_lambda_outside_zero_one_is_refused() -> None:
    scores, rows, vectors = pool()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        greedy_select(scores, rows, 3, diversity=1.5, vectors=vectors)


def test_small_and_large_catalogs_pick_the_same_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small catalogs compare each pick with every item; large ones gather each user's pool.
    import learner.rerank as rerank

    scores, rows, vectors = pool(users=7, size=30)
    picks = []
    for ratio in (0, 100):
        monkeypatch.setattr(rerank, "_DENSE_RATIO", ratio)
        picks.append(greedy_select(scores, rows, 10, diversity=0.5, vectors=vectors)[1])
    assert torch.equal(picks[0], picks[1])
