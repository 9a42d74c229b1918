"""Specifications of learner.recommender (over a bag-of-words encoder) and its parts."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from learner.exceptions import UnknownItemError
from learner.item_table import ItemTable
from learner.popularity import TrendingPopularity
from learner.recommender import Recommender
from learner.types import Event, Item

MakeRecommender = Callable[..., Recommender]
MakeEvent = Callable[..., Event]


def ids(rec_items: object) -> list[str]:
    return [it.item_id for it in rec_items]  # type: ignore[attr-defined]


def top(rec: Recommender, user: str, k: int = 10, **kw: int) -> list[str]:
    return ids(rec.recommend([user], k, **kw)[0].items)


# -- catalog -----------------------------------------------------------------------------


def test_unchanged_items_are_not_encoded_again(
    make_recommender: MakeRecommender, bag_encoder: object, catalog_items: list[Item]
) -> None:
    rec = make_recommender()
    encoded = bag_encoder.encoded_texts  # type: ignore[attr-defined]
    assert rec.upsert_items(catalog_items) == 0
    assert rec.upsert_items([Item("a", "Space war, again")]) == 1
    assert bag_encoder.encoded_texts == encoded + 1  # type: ignore[attr-defined]


def test_last_version_of_an_item_in_one_upsert_wins(make_recommender: MakeRecommender) -> None:
    rec = make_recommender(items=[])
    rec.upsert_items([Item("x", "Cook food"), Item("x", "Horse in the desert")])
    rec.upsert_items([Item("y", "Horse desert"), Item("z", "Cook food")])
    rec.learn([Event("e1", "u1", "x", "click", None, 0)])
    assert top(rec, "u1", k=1, min_events=1) == ["y"]


# -- exclusions --------------------------------------------------------------------------


def test_consumed_items_are_never_recommended_to_that_user(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a"), make_event("u1", "b"), make_event("u2", "c")])
    rec.learn([make_event("u1", "c", type="view")])
    for min_events in (1, 10):  # personal and blended lists alike
        listed = top(rec, "u1", k=10, min_events=min_events)
        assert not {"a", "b", "c"} & set(listed)
        assert sorted(listed) == ["d", "e", "f", "g", "h"]
    assert "a" in top(rec, "u2", k=10)


def test_deleted_items_are_never_recommended(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    # "e" is the closest item to u1's taste and the most popular one.
    rec.learn([make_event(f"fan{i}", "e") for i in range(5)] + [make_event("u1", "a")])
    assert top(rec, "u1", k=1, min_events=1) == ["e"]
    assert top(rec, "cold", k=1) == ["e"]

    assert rec.delete_items(["e", "missing"]) == 1
    assert "e" not in rec.items
    for user, min_events in [("u1", 1), ("u1", 5), ("cold", 3)]:
        assert "e" not in top(rec, user, k=10, min_events=min_events)
    assert len(top(rec, "cold", k=10)) == 7


def test_re_added_items_come_back(make_recommender: MakeRecommender, make_event: MakeEvent) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a")])
    rec.delete_items(["e"])
    assert "e" not in top(rec, "u1", k=10, min_events=1)
    assert rec.upsert_items([Item("e", "Alien war in space")]) == 1
    assert "e" in rec.items
    assert top(rec, "u1", k=1, min_events=1) == ["e"]


def test_re_added_item_keeps_its_row(make_recommender: MakeRecommender) -> None:
    rec = make_recommender()
    row = rec.items.row_of("c")
    rec.delete_items(["c"])
    rec.upsert_items([Item("c", "Love in Paris")])
    assert rec.items.row_of("c") == row
    assert rec.items.num_rows == 8


def test_deleting_every_item_leaves_empty_lists(
    make_recommender: MakeRecommender, make_event: MakeEvent, catalog_items: list[Item]
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a")])
    rec.delete_items([it.item_id for it in catalog_items])
    assert [r.items for r in rec.recommend(["u1", "cold"], k=5)] == [[], []]


# -- strategies --------------------------------------------------------------------------


def test_cold_user_gets_trending_items_with_strategy_popular(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn(
        [make_event(f"x{i}", "g") for i in range(3)]
        + [make_event(f"y{i}", "c") for i in range(2)]
        + [make_event("z", "h")]
    )
    [cold] = rec.recommend(["never-seen"], k=3)
    assert cold.strategy == "popular"
    assert ids(cold.items) == ["g", "c", "h"]
    assert all(it.because is None for it in cold.items)
    assert cold.event_ts == 0
    assert "never-seen" not in rec.users  # recommending creates no state


def test_user_below_min_events_gets_blend_and_at_min_events_personal(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_events=3)
    rec.learn([make_event("u1", "a")])
    assert rec.recommend(["u1"])[0].strategy == "blend"
    rec.learn([make_event("u1", "b")])
    assert rec.recommend(["u1"])[0].strategy == "blend"
    rec.learn([make_event("u1", "e")])
    assert rec.recommend(["u1"])[0].strategy == "personal"
    rec.learn([make_event("u1", "f")])
    assert rec.recommend(["u1"])[0].strategy == "personal"


def test_min_events_can_be_given_per_call(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_events=3)
    rec.learn([make_event("u1", "a")])
    assert rec.recommend(["u1"], min_events=1)[0].strategy == "personal"
    assert rec.recommend(["u1"], min_events=2)[0].strategy == "blend"


def test_recommend_answers_each_user_in_order_with_sorted_scores(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a"), make_event("u2", "c"), make_event("u2", "d")])
    recs = rec.recommend(["u2", "cold", "u1"], k=4)
    assert [r.user_id for r in recs] == ["u2", "cold", "u1"]
    for r in recs:
        assert len(r.items) == 4
        scores = [it.score for it in r.items]
        assert scores == sorted(scores, reverse=True)
        assert len(set(ids(r.items))) == 4
    assert rec.recommend([], k=4) == []


def test_k_larger_than_the_catalog_returns_every_eligible_item(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a")])
    assert len(top(rec, "u1", k=100)) == 7


def test_event_ts_is_the_newest_event_of_the_user(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a", ts=5_000), make_event("u1", "b", ts=9_000)])
    rec.learn([make_event("u1", "c", ts=7_000)])  # late
    assert rec.recommend(["u1"])[0].event_ts == 9_000


def test_a_users_ranking_does_not_depend_on_who_else_is_in_the_call(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_events=2)
    rec.learn([make_event("u1", "a"), make_event("u1", "c"), make_event("u2", "g")])
    alone = {it.item_id: it.score for it in rec.recommend(["u1"], k=6)[0].items}
    mixed_recs = rec.recommend(["u2", "u1", "cold"], k=6)
    mixed = {it.item_id: it.score for it in mixed_recs[1].items}
    assert mixed_recs[0].strategy == "blend"
    assert set(mixed) == set(alone)

    def order(scores: dict[str, float], x: str, y: str) -> int:
        diff = scores[x] - scores[y]
        return 0 if abs(diff) < 1e-6 else (1 if diff > 0 else -1)

    assert all(order(alone, x, y) == order(mixed, x, y) for x in alone for y in alone)


# -- because -----------------------------------------------------------------------------


def test_because_is_an_item_from_the_users_history(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a"), make_event("u1", "c"), make_event("u1", "f")])
    [r] = rec.recommend(["u1"], k=5, min_events=1)
    assert r.items
    assert {it.because for it in r.items} <= {"a", "c", "f"}


def test_because_points_at_the_history_item_the_recommendation_resembles(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a"), make_event("u1", "c")])
    because = {it.item_id: it.because for it in rec.recommend(["u1"], k=6)[0].items}
    assert because["e"] == "a"  # Alien war in space <- Space war
    assert because["b"] == "a"  # Robot ship in space <- Space war
    assert because["d"] == "c"  # Love and a kiss in the rain <- Love in Paris


def because_one_user(rec: Recommender, user_id: str, item_rows: torch.Tensor) -> list[str]:
    """The definition of ``because``, one user at a time: for each recommended row, the
    history item with the largest share of its score (bilinear share by decayed event
    weight, co-occurrence share by recency weight, each scaled by the head's mixing)."""
    history = rec.users.history(user_id)
    x = rec._item_matrix()
    hist_rows = torch.tensor([h.item_row for h in history])
    newest = max(h.ts_ms for h in history)
    half_life = rec.config.user_half_life_s
    w = torch.tensor([h.weight * 2.0 ** (-(newest - h.ts_ms) / 1000 / half_life) for h in history])
    mix = rec.head.mixing(torch.tensor([len(history)]))[0]
    contrib = mix[0] * w.unsqueeze(-1) * (rec.head.query(x[hist_rows]) @ x[item_rows].T) / w.sum()
    assert rec.cooc is not None
    n, window, recency = len(history), rec.config.cooc_history, rec.config.cooc_recency
    a = torch.tensor(
        [
            h.weight * recency ** (n - 1 - j) if j >= n - window else 0.0
            for j, h in enumerate(history)
        ]
    )
    sim = rec.cooc.similarity(hist_rows, item_rows)
    contrib = contrib + mix[1] * a.unsqueeze(-1) * sim / a.sum()
    return [rec.items.ids[int(hist_rows[b])] for b in contrib.argmax(dim=0).tolist()]


def test_because_of_a_batch_equals_because_one_user_at_a_time(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(history_len=4, cooc_history=3)
    items = ["a", "b", "c", "d", "e", "f", "g", "h"]
    rng = torch.Generator().manual_seed(3)
    for _ in range(2):  # six events a user: more than the ring, so some have left it
        picks = torch.randint(0, len(items), (12,), generator=rng).tolist()
        rec.learn([make_event(f"u{i % 4}", items[p]) for i, p in enumerate(picks)])
    users = ["u0", "u1", "u2", "u3"]
    lists = rec.recommend(users, k=3, min_events=1)
    assert all(listed.items for listed in lists)
    for user, listed in zip(users, lists, strict=True):
        rows = torch.tensor([rec.items.find(it.item_id) for it in listed.items], dtype=torch.long)
        assert [it.because for it in listed.items] == because_one_user(rec, user, rows)


def test_because_of_users_with_histories_of_many_lengths_equals_one_user_at_a_time(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    """Users of a batch are grouped by history length; each group must still give every user
    exactly their own ``because`` (lengths 1 to 7 around the groups' bounds 1, 2, 4, 8)."""
    rec = make_recommender(history_len=8, cooc_history=3)
    items = ["a", "b", "c", "d", "e", "f", "g", "h"]
    rng = torch.Generator().manual_seed(4)
    events = []
    for u in range(1, 8):
        picks = torch.randint(0, len(items), (u,), generator=rng).tolist()
        events += [make_event(f"u{u}", items[p]) for p in picks]
    rec.learn(events)
    users = [f"u{u}" for u in range(1, 8)]
    lists = rec.recommend([*users, "nobody"], k=3, min_events=1)
    assert [it.because for it in lists[-1].items] == [None] * len(lists[-1].items)
    for user, listed in zip(users, lists[:-1], strict=True):
        assert listed.items
        rows = torch.tensor([rec.items.find(it.item_id) for it in listed.items], dtype=torch.long)
        assert [it.because for it in listed.items] == because_one_user(rec, user, rows)


# -- learning ----------------------------------------------------------------------------


def test_learn_does_not_mutate_its_input(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a")])
    events = [make_event("u1", "b"), make_event("u2", "zzz"), make_event("u1", "c")]
    snapshot = copy.deepcopy(events)
    rec.learn(events)
    assert events == snapshot
    assert len(events) == 3


def test_learn_skips_events_for_unknown_items(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    report = rec.learn([make_event("u1", "a"), make_event("u2", "nope")])
    assert report.events == 1
    assert len(report.unknown_items) == 1
    assert "u2" not in rec.users
    assert rec.users.event_count("u1") == 1


def test_learn_reports_unknown_item_ids(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    report = rec.learn([make_event("u1", "a"), make_event("u2", "nope", event_id="ev-9")])
    assert report.unknown_items == ("nope",)


def test_learn_with_only_unknown_items_changes_nothing(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    report = rec.learn([make_event("u1", "nope")])
    assert (report.events, report.trained_pairs, report.loss) == (0, 0, 0.0)
    assert len(rec.users) == 0


def test_first_event_of_a_user_trains_nothing_and_later_events_do(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    first = rec.learn([make_event("u1", "a")])
    assert first.trained_pairs == 0
    assert rec.head.steps == 0
    second = rec.learn([make_event("u1", "e")])
    assert second.trained_pairs == rec.config.head.negatives
    assert second.loss > 0
    assert rec.head.steps == 1
    assert rec.model_version.endswith("head-1")


def test_hard_negatives_come_from_the_users_last_list_without_the_positive_or_deleted_items(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_train_pairs=10_000, hard_negatives=1.0, hard_negative_pool=3)
    rec.learn([make_event("u1", "a")])
    listed = [it.item_id for it in rec.recommend(["u1"], k=3)[0].items]
    rec.delete_items([listed[1]])
    rec.learn([make_event("u1", listed[0])])  # the positive is the list's first item
    negatives = {rec.items.ids[r] for r in rec._pending[-1][2].reshape(-1).tolist()}
    assert negatives == {listed[2]}  # what is left of the list once both are out


def test_a_user_never_ranked_gets_hard_negatives_scored_from_the_catalog(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_train_pairs=10_000, hard_negatives=1.0, hard_negative_pool=2)
    rec.learn([make_event("u1", "a")])
    rec.learn([make_event("u1", "b")])  # no list was ever ranked for u1
    negatives = set(rec._pending[-1][2].reshape(-1).tolist())
    assert rec.items.find("a") not in negatives and rec.items.find("b") not in negatives
    assert len(negatives) <= 2


def test_learning_can_be_switched_off(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(train=False)
    rec.learn([make_event("u1", "a")])
    report = rec.learn([make_event("u1", "e")])
    assert report.events == 1 and report.trained_pairs == 0
    assert rec.head.steps == 0


def test_a_new_user_is_personal_after_one_click(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "c")])  # Love in Paris
    assert top(rec, "u1", k=1, min_events=1) != top(rec, "u2", k=1, min_events=1)
    rec.learn([make_event("u2", "a")])  # Space war
    assert top(rec, "u2", k=2, min_events=1) == ["e", "b"]


def test_brand_new_untouched_item_close_to_the_history_ranks_first(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.learn([make_event("u1", "a"), make_event("u1", "e")])
    rec.learn([make_event(f"other{i}", "b") for i in range(4)])
    rec.upsert_items([Item("new", "Space alien war star")])
    [r] = rec.recommend(["u1"], k=3, min_events=1)
    assert r.items[0].item_id == "new"
    assert r.items[0].because in {"a", "e"}


def test_learn_does_not_touch_the_global_torch_rng(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    state = torch.random.get_rng_state()
    for _ in range(3):
        rec.learn([make_event("u1", "a"), make_event("u2", "c")])
        rec.recommend(["u1", "u2"], k=3)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_same_seed_and_events_give_the_same_lists(
    make_recommender: MakeRecommender,
) -> None:
    def run() -> list[list[tuple[str, float]]]:
        rec = make_recommender()
        for i in range(4):
            rec.learn(
                [
                    Event(f"e{i}a", "u1", "abcdefgh"[i], "click", None, i * 1000),
                    Event(f"e{i}b", "u2", "hgfedcba"[i], "purchase", None, i * 1000),
                ]
            )
        return [[(it.item_id, it.score) for it in r.items] for r in rec.recommend(["u1", "u2"])]

    assert run() == run()


# -- item table and trending popularity --------------------------------------------------


def test_item_table_rejects_unknown_and_deleted_items() -> None:
    table = ItemTable(dim=2)
    table.upsert(["a", "b"], torch.eye(2))
    table.delete(["a"])
    with pytest.raises(UnknownItemError):
        table.row_of("a")
    with pytest.raises(KeyError):
        table.row_of("zzz")
    assert table.find("a") is None
    assert table.find("b") == 1
    assert len(table) == 1


def test_item_table_grows_past_its_capacity() -> None:
    table = ItemTable(dim=2, capacity=2)
    table.upsert([f"i{n}" for n in range(5)], torch.ones(5, 2))
    assert table.capacity >= 5
    assert table.num_active == 5
    assert table.row_of("i4") == 4


def test_item_table_version_changes_on_every_change() -> None:
    table = ItemTable(dim=2)
    v0 = table.version
    table.upsert(["a"], torch.ones(1, 2))
    v1 = table.version
    table.delete(["a"])
    v2 = table.version
    table.delete(["a"])  # nothing to delete
    assert v0 < v1 < v2 == table.version


def test_trending_counts_halve_every_half_life_of_event_time() -> None:
    pop = TrendingPopularity(half_life_s=60.0)
    pop.observe(torch.tensor([0, 0, 1]), torch.ones(3), torch.tensor([0, 0, 0]))
    pop.observe(torch.tensor([2]), torch.ones(1), torch.tensor([120_000]))
    assert torch.allclose(pop.scores(3), torch.tensor([0.5, 0.25, 1.0]))


def test_trending_counts_late_events_at_their_own_age() -> None:
    pop = TrendingPopularity(half_life_s=60.0)
    pop.observe(torch.tensor([0]), torch.ones(1), torch.tensor([60_000]))
    pop.observe(torch.tensor([1]), torch.ones(1), torch.tensor([0]))
    assert torch.allclose(pop.scores(2), torch.tensor([1.0, 0.5]))


def test_co_occurrence_learned_from_a_batch_equals_learning_its_events_one_by_one(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    """Each event pairs with its user's recent items, earlier events of its own batch included,
    however the events are cut into batches (histories longer than ``cooc_history`` too)."""
    import random

    rng = random.Random(5)
    names = list(make_recommender().items.ids)
    events = [
        make_event(f"u{rng.randrange(4)}", rng.choice(names), rng.choice(["click", "purchase"]))
        for _ in range(80)
    ]
    batched = make_recommender(train=False, cooc_history=5)
    single = make_recommender(train=False, cooc_history=5)
    for at in range(0, len(events), 27):
        batched.learn(events[at : at + 27])
    for ev in events:
        single.learn([ev])
    assert batched.cooc is not None and single.cooc is not None
    rows = torch.arange(batched.items.num_rows)
    assert torch.allclose(batched.cooc.mass[rows], single.cooc.mass[rows])
    assert torch.allclose(
        batched.cooc.similarity(rows, rows), single.cooc.similarity(rows, rows), atol=1e-6
    )
    assert float(single.cooc.similarity(rows, rows).sum()) > 0
