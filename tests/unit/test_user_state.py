"""Specifications of learner.user_state: decay, batch folding, bounded history, consumed items."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
import torch

from learner.user_state import EventWeights, UserStateStore, decay

HOUR_S = 3600.0
HOUR_MS = 3_600_000


def store(dim: int = 4, **kwargs: object) -> UserStateStore:
    kwargs.setdefault("half_life_s", HOUR_S)
    return UserStateStore(dim, **kwargs)  # type: ignore[arg-type]


def fold_one(s: UserStateStore, user: str, item_row: int, vec: list[float], ts_ms: int,
             weight: float = 1.0) -> None:  # fmt: skip
    s.fold(
        s.rows_for([user]),
        torch.tensor([item_row]),
        torch.tensor([vec]),
        torch.tensor([weight]),
        torch.tensor([ts_ms]),
    )


# -- decay -------------------------------------------------------------------------------


def test_decay_halves_the_weight_every_half_life() -> None:
    weights = decay(torch.ones(4), torch.tensor([0.0, 1.0, 2.0, 3.0]) * HOUR_S, HOUR_S)
    assert torch.allclose(weights, torch.tensor([1.0, 0.5, 0.25, 0.125]))


def test_decay_scales_with_the_weight_and_is_smooth_between_half_lives() -> None:
    w = decay(torch.tensor([4.0]), torch.tensor([HOUR_S / 2]), HOUR_S)
    assert torch.allclose(w, torch.tensor([4.0 * 2**-0.5]))


def test_user_vector_halves_after_one_half_life_of_event_time() -> None:
    s = store(dim=2)
    fold_one(s, "u1", 0, [1.0, 0.0], ts_ms=0)
    fold_one(s, "u1", 1, [0.0, 1.0], ts_ms=HOUR_MS)
    fold_one(s, "u1", 2, [0.0, 0.0], ts_ms=2 * HOUR_MS)
    row = s.row("u1")
    assert row is not None
    assert torch.allclose(s.vectors[row], torch.tensor([0.25, 0.5]))


def test_event_weights_follow_the_event_type_and_rating() -> None:
    w = EventWeights()
    assert w.of("view", None) < w.of("click", None) < w.of("add_to_cart", None)
    assert w.of("add_to_cart", None) < w.of("purchase", None)
    assert w.of("rating", 1.0) < w.of("rating", 5.0) == w.of("rating", 99.0)
    assert w.of("rating", None) == w.by_type["rating"]


# -- batch fold == one by one ------------------------------------------------------------


def random_events(seed: int, n: int, users: int, items: int, dim: int) -> list[tuple]:
    rng = random.Random(seed)
    vectors = torch.randn(items, dim, generator=torch.Generator().manual_seed(seed))
    return [
        (
            f"u{rng.randrange(users)}",
            (row := rng.randrange(items)),
            vectors[row].tolist(),
            rng.choice([0.25, 1.0, 2.0, 3.0]),
            rng.randrange(0, 10 * HOUR_MS),  # out of order on purpose
        )
        for _ in range(n)
    ]


def fold_batch(s: UserStateStore, events: list[tuple]) -> None:
    s.fold(
        s.rows_for([e[0] for e in events]),
        torch.tensor([e[1] for e in events]),
        torch.tensor([e[2] for e in events]),
        torch.tensor([e[3] for e in events]),
        torch.tensor([e[4] for e in events]),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folding_a_batch_equals_folding_its_events_one_by_one(seed: int) -> None:
    events = random_events(seed, n=60, users=5, items=12, dim=6)
    assert any(a[4] > b[4] for a, b in itertools.pairwise(events))  # out of order
    batch, single = store(dim=6), store(dim=6)
    fold_batch(batch, events)
    for event in events:
        fold_batch(single, [event])

    assert len(batch) == len(single) == len({e[0] for e in events})
    for user in {e[0] for e in events}:
        rb, rs = batch.row(user), single.row(user)
        assert rb is not None and rs is not None
        assert torch.allclose(batch.vectors[rb], single.vectors[rs], rtol=1e-5, atol=1e-6)
        assert int(batch.last_ts_ms[rb]) == int(single.last_ts_ms[rs])
        assert batch.event_count(user) == single.event_count(user)
        assert batch.history(user) == single.history(user)
        assert batch.consumed(user) == single.consumed(user)


def test_folding_several_batches_equals_one_batch() -> None:
    events = random_events(7, n=45, users=4, items=10, dim=3)
    whole, parts = store(dim=3), store(dim=3)
    fold_batch(whole, events)
    for start in range(0, len(events), 15):
        fold_batch(parts, events[start : start + 15])
    for user in {e[0] for e in events}:
        assert torch.allclose(
            whole.vectors[whole.row(user)], parts.vectors[parts.row(user)], atol=1e-6
        )


def test_late_event_counts_as_if_it_had_arrived_in_order() -> None:
    in_order, late = store(dim=2), store(dim=2)
    fold_one(in_order, "u1", 0, [1.0, 0.0], ts_ms=0)
    fold_one(in_order, "u1", 1, [0.0, 1.0], ts_ms=HOUR_MS)
    fold_one(late, "u1", 1, [0.0, 1.0], ts_ms=HOUR_MS)
    fold_one(late, "u1", 0, [1.0, 0.0], ts_ms=0)
    assert torch.allclose(in_order.vectors[0], late.vectors[0])
    assert torch.allclose(late.vectors[0], torch.tensor([0.5, 1.0]))
    assert int(late.last_ts_ms[0]) == HOUR_MS


def test_empty_fold_changes_nothing() -> None:
    s = store()
    empty = torch.tensor([], dtype=torch.long)
    s.fold(empty, empty, torch.zeros(0, 4), torch.zeros(0), empty)
    assert len(s) == 0


def test_state_grows_past_its_initial_capacity() -> None:
    s = store(dim=2, capacity=2)
    for i in range(5):
        fold_one(s, f"u{i}", i, [1.0, float(i)], ts_ms=i)
    assert len(s) == 5
    assert s.event_count("u4") == 1
    assert torch.allclose(s.vectors[s.row("u4")], torch.tensor([1.0, 4.0]))


# -- history and consumed ----------------------------------------------------------------


def test_history_is_bounded_by_history_len_and_keeps_the_newest() -> None:
    s = store(dim=2, history_len=3)
    for i in range(5):
        fold_one(s, "u1", i, [1.0, 0.0], ts_ms=i * 1000, weight=float(i + 1))
    history = s.history("u1")
    assert [h.item_row for h in history] == [2, 3, 4]
    assert [h.weight for h in history] == [3.0, 4.0, 5.0]
    assert [h.ts_ms for h in history] == [2000, 3000, 4000]
    assert s.event_count("u1") == 5


def test_consumed_set_remembers_every_item_beyond_the_history() -> None:
    s = store(dim=2, history_len=2)
    for i in [3, 1, 3, 4, 0]:
        fold_one(s, "u1", i, [1.0, 0.0], ts_ms=0)
    assert s.consumed("u1") == {0, 1, 3, 4}


def test_unknown_user_has_no_state() -> None:
    s = store()
    assert "ghost" not in s
    assert s.row("ghost") is None
    assert s.event_count("ghost") == 0
    assert s.history("ghost") == ()
    assert s.consumed("ghost") == set()


def test_users_do_not_share_state() -> None:
    s = store(dim=2)
    fold_one(s, "u1", 0, [1.0, 0.0], ts_ms=0)
    fold_one(s, "u2", 1, [0.0, 1.0], ts_ms=0)
    assert s.consumed("u1") == {0}
    assert s.consumed("u2") == {1}
    assert torch.allclose(s.vectors[s.row("u1")], torch.tensor([1.0, 0.0]))


def test_rows_for_creates_each_user_once() -> None:
    s = store()
    first = s.rows_for(["a", "b", "a"]).tolist()
    assert first == [0, 1, 0]
    assert s.rows_for(["b", "c"]).tolist() == [1, 2]
    assert len(s) == 3


# -- flat history rings ------------------------------------------------------------------


def test_recent_gives_the_newest_items_oldest_first_and_right_aligned() -> None:
    s = store(dim=2, history_len=3)
    for i, item in enumerate([5, 6, 7, 8]):
        fold_one(s, "long", item, [1.0, 0.0], ts_ms=i * 1000, weight=float(i + 1))
    fold_one(s, "short", 9, [1.0, 0.0], ts_ms=0, weight=2.0)
    items, weights, ts = s.recent(s.rows_for(["long", "short"]), 3, with_times=True)
    assert items.tolist() == [[6, 7, 8], [-1, -1, 9]]
    assert weights.tolist() == [[2.0, 3.0, 4.0], [0.0, 0.0, 2.0]]
    assert ts[0].tolist() == [1000, 2000, 3000]


def test_exclusions_cover_the_ring_and_the_items_that_left_it() -> None:
    s = store(dim=2, history_len=2)
    for item in [3, 1, 3, 4, 0]:
        fold_one(s, "u1", item, [1.0, 0.0], ts_ms=0)
    fold_one(s, "u2", 2, [1.0, 0.0], ts_ms=0)
    who, what = s.exclusions([s.row("u1"), None, s.row("u2")])
    pairs = set(zip(who.tolist(), what.tolist(), strict=True))
    assert pairs == {(0, 0), (0, 1), (0, 3), (0, 4), (2, 2)}


def test_items_that_left_the_ring_are_bounded_by_max_consumed() -> None:
    s = store(dim=2, history_len=2, max_consumed=100)
    for item in range(1000):
        fold_one(s, "u1", item, [1.0, 0.0], ts_ms=item)
    consumed = s.consumed("u1")
    assert {998, 999} <= consumed  # the ring
    assert set(range(900, 998)) <= consumed  # the newest that left it are kept
    assert len(consumed) <= 2 + 2 * 100  # bounded (compacted at powers of two)


def test_state_bytes_per_user_do_not_grow_with_events_inside_the_ring() -> None:
    s = store(dim=2, history_len=50)
    for i in range(5):
        fold_one(s, f"u{i}", 0, [1.0, 0.0], ts_ms=0)
    before = s.state_bytes()
    for t in range(40):
        fold_batch(s, [(f"u{i}", t, [1.0, 0.0], 1.0, t) for i in range(5)])
    assert s.state_bytes() == before


# -- snapshots of a batch and the remembered list heads -----------------------------------


def test_batch_snapshots_hold_each_users_own_history_consumed_items_and_event_ids() -> None:
    rng = random.Random(3)
    s = store(dim=3, history_len=4, dedup_window=3)
    users = [f"u{i}" for i in range(6)]
    for n in range(60):
        uid = rng.choice(users)
        s.fold(
            s.rows_for([uid]),
            torch.tensor([rng.randrange(30)]),
            torch.randn(1, 3),
            torch.tensor([rng.choice([0.25, 1.0, 3.0])]),
            torch.tensor([n * 1000]),
            event_hashes=[1000 + n],
        )
    name = {r: f"item-{r}" for r in range(30)}.get
    snaps = s.snapshots(users[::-1], name, encoder="enc")
    assert [snap.user_id for snap in snaps] == users[::-1]
    for snap in snaps:
        row = s.row(snap.user_id)
        assert row is not None
        history = s.history(snap.user_id)
        assert snap.history == tuple((name(e.item_row), e.weight, e.ts_ms) for e in history)
        assert snap.count == s.event_count(snap.user_id)
        assert snap.vector == s.vectors[row].numpy().astype("<f4").tobytes()
        assert snap.last_ts_ms == int(s.last_ts_ms[row])
        consumed = set(snap.consumed) | {iid for iid, _, _ in snap.history}
        assert consumed == {name(r) for r in s.consumed(snap.user_id)}
        # The ids of the user's last (up to) 3 events, oldest first.
        assert len(snap.seen) == min(3, snap.count)
        assert list(snap.seen) == sorted(snap.seen)
        assert snap.encoder == "enc"
        assert s.snapshot(snap.user_id, name) == replace(snap, encoder="")


def test_a_snapshot_leaves_out_history_entries_whose_item_has_no_id_any_more() -> None:
    s = store(dim=2)
    fold_batch(s, [("u", 0, [1.0, 0.0], 1.0, 0), ("u", 1, [0.0, 1.0], 1.0, 1000)])
    snap = s.snapshot("u", lambda r: None if r == 0 else f"i{r}")
    assert [iid for iid, _, _ in snap.history] == ["i1"]


def test_remembered_list_heads_are_kept_per_user_and_cleared_with_the_user() -> None:
    s = store(dim=2, pool_len=3)
    rows = s.rows_for(["a", "b"])
    s.remember_pools(rows.tolist(), torch.tensor([[5, 6, 7, 8], [9, -1, -1, -1]]))
    assert s.pools(rows).tolist() == [[5, 6, 7], [9, -1, -1]]
    s.remember_pools([int(rows[0])], torch.tensor([[1]]))  # a shorter list replaces all of it
    assert s.pools(rows[:1]).tolist() == [[1, -1, -1]]
    s.remove(["a"])
    again = s.rows_for(["c"])  # reuses a's row
    assert int(again[0]) == int(rows[0])
    assert s.pools(again).tolist() == [[-1, -1, -1]]


def test_a_store_without_list_heads_keeps_none() -> None:
    s = store(dim=2)
    rows = s.rows_for(["a"])
    s.remember_pools(rows.tolist(), torch.tensor([[5, 6]]))
    assert s.pools(rows).shape == (1, 0)
