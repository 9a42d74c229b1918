"""Specifications of learner.explain: the decomposition adds up to the score a published
list shows, names the same `because`, and ranks the item where the list has it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from learner.explain import UnknownItem, explain
from learner.recommender import Recommender
from learner.types import Event

MakeRecommender = Callable[..., Recommender]
MakeEvent = Callable[..., Event]

HISTORIES = {
    "space_fan": ["a", "e", "b", "a", "e"],
    "romantic": ["c", "d", "c", "h"],
    "newcomer": ["f"],
}


@pytest.fixture
def trained(make_recommender: MakeRecommender, make_event: MakeEvent) -> Recommender:
    rec = make_recommender(min_events=3)
    # Two rounds, so that co-occurrence, trending and the head's steps all have something.
    for _ in range(2):
        for user, items in HISTORIES.items():
            rec.learn([make_event(user, item) for item in items])
    return rec


@pytest.mark.parametrize("user", sorted(HISTORIES))
def test_every_listed_item_is_explained_with_its_published_score_rank_and_because(
    trained: Recommender, user: str
) -> None:
    [listed] = trained.recommend([user], k=5)
    assert listed.items
    for position, scored in enumerate(listed.items, 1):
        ex = explain(trained, user, scored.item_id)
        assert ex.final == pytest.approx(scored.score, abs=1e-5)
        assert ex.rank == position
        assert ex.because == scored.because
        assert ex.strategy == listed.strategy


def test_the_parts_add_up_to_the_personal_score(trained: Recommender) -> None:
    for user in HISTORIES:
        for item in "abcdefgh":
            ex = explain(trained, user, item)
            assert sum(p.value for p in ex.parts) == pytest.approx(ex.personal, abs=1e-5)
            names = [p.name for p in ex.parts]
            assert names[:3] == ["content similarity", "learned offset", "item bias"]


def test_a_personal_users_final_score_is_the_personal_score(trained: Recommender) -> None:
    ex = explain(trained, "space_fan", "g")
    assert ex.alpha == 1.0 and ex.strategy == "personal"
    assert ex.final == pytest.approx(ex.personal)


def test_a_blend_user_mixes_personal_and_trending_by_alpha(trained: Recommender) -> None:
    ex = explain(trained, "newcomer", "a")  # 2 events of 3 needed
    assert ex.strategy == "blend" and ex.alpha == pytest.approx(2 / 3)
    assert 0.0 <= ex.trending_scaled <= 1.0
    assert ex.final is not None and math.isfinite(ex.final)


def test_history_contributions_are_sorted_and_split_into_content_and_cooccurrence(
    trained: Recommender,
) -> None:
    ex = explain(trained, "space_fan", "b", top=10)
    totals = [h.total for h in ex.history]
    assert totals == sorted(totals, reverse=True)
    assert {h.item_id for h in ex.history} <= {"a", "e", "b"}
    for h in ex.history:
        assert h.total == pytest.approx(h.content + h.cooccurrence)
        assert h.weight > 0


def test_a_consumed_item_is_excluded_and_unranked(trained: Recommender) -> None:
    ex = explain(trained, "romantic", "c")
    assert ex.excluded == "consumed" and ex.rank is None and ex.final is None
    assert ex.eligible == len("abcdefgh") - len(set(HISTORIES["romantic"]))


def test_an_unknown_user_is_explained_as_new_and_gets_trending(trained: Recommender) -> None:
    ex = explain(trained, "stranger", "a")
    assert ex.events == 0 and ex.strategy == "popular" and ex.alpha == 0.0
    assert ex.history == [] and ex.because is None
    assert ex.final == pytest.approx(ex.trending_scaled)


def test_an_unknown_or_deleted_item_is_an_error(trained: Recommender) -> None:
    with pytest.raises(UnknownItem):
        explain(trained, "space_fan", "no-such-item")
    trained.delete_items(["g"])
    with pytest.raises(UnknownItem):
        explain(trained, "space_fan", "g")


def test_to_dict_is_plain_data_with_the_because(trained: Recommender) -> None:
    import json

    out: dict[str, Any] = json.loads(json.dumps(explain(trained, "space_fan", "b").to_dict()))
    assert out["because"] == out["history"][0]["item_id"]
    assert {p["name"] for p in out["parts"]} >= {"content similarity", "item bias"}


@pytest.mark.parametrize("events", [0, 1, 4])
def test_a_profiled_user_is_explained_as_their_list_ranks_them(
    make_recommender: MakeRecommender, make_event: MakeEvent, events: int
) -> None:
    from learner.types import UserProfile

    rec = make_recommender(min_events=3)
    rec.upsert_profiles([UserProfile("fan", {"likes": "space war"})])
    rec.learn([make_event("fan", item) for item in "cdhc"[:events]])
    [listed] = rec.recommend(["fan"], k=4)
    for position, scored in enumerate(listed.items, 1):
        ex = explain(rec, "fan", scored.item_id)
        assert ex.strategy == listed.strategy  # a profile alone is a blend, not "popular"
        assert ex.final == pytest.approx(scored.score, abs=1e-5)
        assert ex.rank == position


def test_an_item_a_rule_bans_is_excluded_and_takes_no_rank(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    from learner.rules import Rules

    rec = make_recommender(min_events=1, rules=Rules(exclude_items=["e"]))
    rec.learn([make_event("u", item) for item in "ab"])
    ex = explain(rec, "u", "e")  # the closest item to the user's space history, but banned
    assert ex.excluded == "rule" and ex.rank is None and ex.final is None
    assert ex.eligible == len("abcdefgh") - 2 - 1
    [listed] = rec.recommend(["u"], k=5)
    ranks = [explain(rec, "u", scored.item_id).rank for scored in listed.items]
    # The banned item takes no place ahead of the published ones (ties share a rank).
    assert ranks[0] == 1 and ranks == sorted(ranks)
