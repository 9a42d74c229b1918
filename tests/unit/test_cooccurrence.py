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


def exact_pairs(
    items: list[int], weights: list[float], histories: list[list[tuple[int, float]]]
) -> dict[tuple[int, int], float]:
    """The co-occurrence weights an unbounded table would hold."""
    pairs: dict[tuple[int, int], float] = {}
    for item, w, hist in zip(items, weights, histories, strict=True):
        for row, w_row in hist:
            if row != item:
                for key in ((row, item), (item, row)):
                    pairs[key] = pairs.get(key, 0.0) + w * w_row
    return pairs


def test_rows_with_room_hold_exactly_the_summed_pair_weights() -> None:
    items, weights, histories = _stream(seed=3)
    co = CoOccurrence(max_neighbours=32)  # more slots than items: nothing is ever evicted
    for start in range(0, len(items), 7):  # several batches, pairs repeating across them
        end = start + 7
        co.observe_many(items[start:end], weights[start:end], histories[start:end])
    held = {
        (row, int(col)): float(w)
        for row in range(12)
        for col, w in zip(co.idx[row], co.weight[row], strict=True)
        if col >= 0
    }
    expected = exact_pairs(items, weights, histories)
    assert held.keys() == expected.keys()
    assert all(abs(held[key] - expected[key]) < 1e-4 for key in expected)


def test_each_rows_neighbours_stay_sorted_with_empty_slots_first() -> None:
    items, weights, histories = _stream(seed=5)
    co = CoOccurrence(max_neighbours=8)  # small: rows fill up and evict
    for start in range(0, len(items), 5):
        co.observe_many(
            items[start : start + 5], weights[start : start + 5], histories[start : start + 5]
        )
    for row in co.idx[:12]:
        assert row.tolist() == sorted(row.tolist())
        listed = row[row >= 0].tolist()
        assert len(listed) == len(set(listed))


def test_batched_scores_and_similarities_equal_the_one_user_versions() -> None:
    items, weights, histories = _stream(seed=11)
    co = CoOccurrence(max_neighbours=6)
    co.observe_many(items, weights, histories)
    hist = torch.tensor([[-1, -1, 3], [4, 0, 7], [-1, -1, -1]])
    w = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.5, 3.0], [0.0, 0.0, 0.0]])
    batched = co.scores_many(hist, w, num_rows=12)
    for b in range(3):
        keep = hist[b] >= 0
        single = co.scores(hist[b][keep], w[b][keep], num_rows=12)
        assert torch.allclose(batched[b], single, atol=1e-5)
    cols = torch.tensor([[0, 5], [1, 2], [3, 3]])
    sims = co.similarity_many(hist, cols)
    for b in range(3):
        for h in range(3):
            if hist[b, h] >= 0:
                expected = co.similarity(hist[b, h : h + 1], cols[b])[0]
                assert torch.allclose(sims[b, h], expected, atol=1e-5)
            else:
                assert sims[b, h].abs().sum() == 0


def test_the_dense_mirror_scores_like_the_lists_while_rows_change_and_evict() -> None:
    """Small catalogs score through a dense copy of the lists: it must follow every change,
    including neighbours evicted from full rows, and the catalog growing."""
    dense, lists = CoOccurrence(max_neighbours=3), CoOccurrence(max_neighbours=3, dense_max_items=0)
    hist = torch.tensor([[-1, 2, 5], [4, 0, 7], [-1, -1, -1], [1, 1, 9]])
    w = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.5, 3.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    for seed in (3, 4, 5):  # scored between updates: the mirror refreshes only changed rows
        items, weights, histories = _stream(seed)
        for co in (dense, lists):
            co.observe_many(items, weights, histories)
        assert torch.allclose(
            dense.scores_many(hist, w, num_rows=12), lists.scores_many(hist, w, num_rows=12)
        )
    for co in (dense, lists):  # a row past the first capacity: the mirror is rebuilt
        co.observe_many([2000], [1.0], [[(5, 1.0)]])
    wide = dense.scores_many(hist, w, num_rows=2001)
    assert torch.allclose(wide, lists.scores_many(hist, w, num_rows=2001))
    assert float(wide[0, 2000]) > 0
    assert dense._dense is not None and lists._dense is None
