"""Co-occurrence neighbour lists: a batch update equals event-by-event updates."""

from __future__ import annotations

import random

import torch

from learner.cooccurrence import CoOccurrence


def _stream(seed: int) -> tuple[list[int], list[float], list[list[tuple[int, float]]]]:
    rng = random.Random(seed)
    items, weights, histories = [], [], []
    for _ in range(60):
        items.append(rng.randrange(12))
        weights.append(rng.choice([0.5, 1.0, 2.0]))
        histories.append([(rng.randrange(12), rng.choice([1.0, 3.0])) for _ in range(4)])
    return items, weights, histories


def test_batch_update_equals_one_event_at_a_time() -> None:
    items, weights, histories = _stream(seed=7)
    one = CoOccurrence(max_neighbours=16)
    for item, w, hist in zip(items, weights, histories, strict=True):
        one.observe(
            item=item,
            item_weight=w,
            history=torch.tensor([r for r, _ in hist], dtype=torch.long),
            history_weights=torch.tensor([x for _, x in hist]),
        )
    many = CoOccurrence(max_neighbours=16)
    many.observe_many(items, weights, histories)
    rows = torch.arange(12)
    assert torch.allclose(one.similarity(rows, rows), many.similarity(rows, rows), atol=1e-5)
    assert torch.allclose(one.mass[:12], many.mass[:12])


def test_full_rows_keep_their_heaviest_neighbours() -> None:
    co = CoOccurrence(max_neighbours=2)
    co.observe_many([0, 0, 0], [1.0, 1.0, 1.0], [[(1, 5.0)], [(2, 1.0)], [(3, 9.0)]])
    assert set(co.idx[0].tolist()) == {1, 3}  # the two heaviest of three neighbours
    assert co.similarity(torch.tensor([0]), torch.tensor([3]))[0, 0] > 0
