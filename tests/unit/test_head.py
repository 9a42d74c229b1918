"""Specifications of learner.head: BPR steps learn, W starts at I, seeding is private."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from learner.head import BilinearHead, HeadConfig, bpr_loss

DIM, ITEMS, USERS, NEGATIVES = 8, 24, 6, 4


@dataclass
class Batch:
    embeddings: Tensor
    users: Tensor
    pos: Tensor
    neg: Tensor


@pytest.fixture
def batch() -> Batch:
    """A fixed batch: unit item embeddings, user vectors near their positives."""
    g = torch.Generator().manual_seed(1234)
    embeddings = torch.nn.functional.normalize(torch.randn(ITEMS, DIM, generator=g), dim=-1)
    pos = torch.randint(0, ITEMS, (USERS,), generator=g)
    users = embeddings[pos] + 0.5 * torch.randn(USERS, DIM, generator=g)
    neg = torch.randint(0, ITEMS, (USERS, NEGATIVES), generator=g)
    return Batch(embeddings, users, pos, neg)


def head(seed: int = 0, **config: object) -> BilinearHead:
    cfg = HeadConfig(rank=4, negatives=NEGATIVES, seed=seed, **config)  # type: ignore[arg-type]
    return BilinearHead(DIM, cfg, capacity=ITEMS)


def test_bpr_loss_is_log2_for_equal_scores_and_falls_as_positives_win() -> None:
    tie = bpr_loss(torch.zeros(3), torch.zeros(3, 2))
    assert torch.isclose(tie, torch.tensor(6 * 0.693147), atol=1e-5)
    assert bpr_loss(torch.ones(3), torch.zeros(3, 2)) < tie
    assert bpr_loss(-torch.ones(3), torch.zeros(3, 2)) > tie


def test_one_step_lowers_the_bpr_loss_on_its_batch(batch: Batch) -> None:
    h = head()
    before = float(h.loss(batch.users, batch.pos, batch.neg, batch.embeddings))
    reported = h.step(batch.users, batch.pos, batch.neg, batch.embeddings)
    after = float(h.loss(batch.users, batch.pos, batch.neg, batch.embeddings))
    assert reported == pytest.approx(before, rel=1e-5)
    assert after < before
    assert h.steps == 1


def test_repeated_steps_keep_lowering_the_loss(batch: Batch) -> None:
    h = head()
    losses = [h.step(batch.users, batch.pos, batch.neg, batch.embeddings) for _ in range(5)]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < losses[0]


def test_loss_does_not_update_anything(batch: Batch) -> None:
    h = head()
    params = [t.detach().clone() for t in (h.U, h.V, h.delta, h.bias)]
    h.loss(batch.users, batch.pos, batch.neg, batch.embeddings)
    assert all(torch.equal(a, b) for a, b in zip(params, (h.U, h.V, h.delta, h.bias), strict=True))
    assert h.steps == 0


def test_step_touches_only_the_rows_of_its_batch(batch: Batch) -> None:
    h = head()
    h.step(batch.users, batch.pos, batch.neg, batch.embeddings)
    touched = set(batch.pos.tolist()) | set(batch.neg.reshape(-1).tolist())
    untouched = [r for r in range(ITEMS) if r not in touched]
    assert untouched, "the fixture should leave some rows untouched"
    assert torch.count_nonzero(h.delta[untouched]) == 0
    assert torch.count_nonzero(h.bias[untouched]) == 0


def test_empty_batch_is_a_no_op() -> None:
    h = head()
    empty = torch.tensor([], dtype=torch.long)
    assert h.step(torch.zeros(0, DIM), empty, empty.reshape(0, NEGATIVES), torch.eye(DIM)) == 0.0
    assert h.steps == 0


def test_untrained_head_ranks_by_content_similarity(batch: Batch) -> None:
    h = head()
    scores = h.scores(batch.users, batch.embeddings, ITEMS)
    cosine = torch.nn.functional.normalize(batch.users, dim=-1) @ batch.embeddings.T
    assert scores.shape == (USERS, ITEMS)
    assert torch.allclose(scores, cosine, atol=1e-6)
    assert torch.equal(scores.argsort(dim=-1), cosine.argsort(dim=-1))


def test_untrained_query_is_the_normalised_user_vector(batch: Batch) -> None:
    h = head()
    expected = torch.nn.functional.normalize(batch.users, dim=-1)
    assert torch.allclose(h.query(batch.users), expected, atol=1e-6)


def test_query_of_a_zero_user_vector_is_zero() -> None:
    assert torch.count_nonzero(head().query(torch.zeros(2, DIM))) == 0


def run_steps(h: BilinearHead, batch: Batch, steps: int = 3) -> None:
    active = torch.ones(ITEMS, dtype=torch.bool)
    for _ in range(steps):
        neg = h.sample_negatives(active, USERS)
        h.step(batch.users, batch.pos, neg, batch.embeddings)


def params(h: BilinearHead) -> list[Tensor]:
    return [t.detach() for t in (h.U, h.V, h.delta, h.bias)]


def test_same_seed_gives_the_same_parameters_after_the_same_steps(batch: Batch) -> None:
    a, b = head(seed=5), head(seed=5)
    run_steps(a, batch)
    run_steps(b, batch)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


def test_different_seeds_give_different_parameters(batch: Batch) -> None:
    a, b = head(seed=5), head(seed=6)
    assert not torch.equal(a.U, b.U)
    run_steps(a, batch)
    run_steps(b, batch)
    assert not torch.equal(a.delta, b.delta)


def test_head_does_not_touch_the_global_torch_rng(batch: Batch) -> None:
    state = torch.random.get_rng_state()
    h = head(seed=3)
    run_steps(h, batch)
    h.scores(batch.users, batch.embeddings, ITEMS)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_negatives_are_drawn_only_from_live_items() -> None:
    active = torch.zeros(ITEMS, dtype=torch.bool)
    active[[2, 5, 11]] = True
    neg = head().sample_negatives(active, 50)
    assert neg.shape == (50, NEGATIVES)
    assert set(neg.reshape(-1).tolist()) <= {2, 5, 11}


def test_capacity_grows_and_keeps_learned_rows(batch: Batch) -> None:
    h = head()
    h.step(batch.users, batch.pos, batch.neg, batch.embeddings)
    delta, bias = h.delta.clone(), h.bias.clone()
    h.ensure_capacity(ITEMS * 3)
    assert h.delta.shape[0] >= ITEMS * 3
    assert torch.equal(h.delta[:ITEMS], delta)
    assert torch.equal(h.bias[:ITEMS], bias)
    assert torch.count_nonzero(h.delta[ITEMS:]) == 0
