"""Specifications of business rules (learner.rules) and diversity as the recommender applies
them to lists, and of the worker publishing those lists."""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch

from consumer.source import InMemorySource, Record
from learner.evaluate import intra_list_diversity
from learner.recommender import Recommender
from learner.rules import RuleIndex, Rules
from learner.types import Event, Item
from tests.unit.conftest import WorkerRig

MakeRecommender = Callable[..., Recommender]
MakeEvent = Callable[..., Event]

# title (bag-of-words vocabulary), genres
CATALOG: dict[str, tuple[str, list[str]]] = {
    "s1": ("Space war", ["SciFi", "War"]),
    "s2": ("Alien war in space", ["SciFi", "War"]),
    "s3": ("Robot ship in space", ["SciFi"]),
    "s4": ("Star ship space alien", ["SciFi"]),
    "s5": ("Space robot star", ["SciFi", "Horror"]),
    "r1": ("Love in Paris", ["Romance"]),
    "r2": ("Love and a kiss in the rain", ["Romance"]),
    "r3": ("Paris kiss", ["Romance", "Comedy"]),
    "w1": ("Horse in the desert", ["Western"]),
    "w2": ("Desert war horse", ["Western", "War"]),
    "m1": ("Music and dance", ["Musical"]),
    "m2": ("Dance music star", ["Musical"]),
    "c1": ("Cook food", ["Comedy"]),
}
ITEMS = [Item(i, title, attributes={"genres": g}) for i, (title, g) in CATALOG.items()]
GENRES = {i: set(g) for i, (_, g) in CATALOG.items()}


@pytest.fixture
def space_fan(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> Callable[..., Recommender]:
    """``space_fan(**ModelConfig fields)``: a model over CATALOG whose user u1 clicked s1."""

    def make(**config: Any) -> Recommender:
        config.setdefault("min_events", 1)
        rec = make_recommender(items=ITEMS, **config)
        rec.learn([make_event("u1", "s1")])
        return rec

    return make


def listed(rec: Recommender, k: int = 5, user: str = "u1") -> list[str]:
    return [it.item_id for it in rec.recommend([user], k)[0].items]


# -- the Rules value -----------------------------------------------------------------------


def test_rules_are_frozen_and_compare_by_content() -> None:
    a = Rules(["x", "y"], {"genres": ["Horror"]}, {"genres": 3})
    assert a == Rules(["y", "x"], {"genres": ("Horror",)}, {"genres": 3})
    assert a != Rules(["x"], {"genres": ["Horror"]}, {"genres": 3})
    with pytest.raises(AttributeError):
        a.exclude_items = frozenset()  # type: ignore[misc]
    assert not Rules().active and a.active


def test_rules_survive_pickling_and_deep_copies() -> None:
    rules = Rules(["x"], {"genres": ["Horror"]}, {"genres": 3})
    assert pickle.loads(pickle.dumps(rules)) == rules == copy.deepcopy(rules)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_per_value\.genres"):
        Rules(max_per_value={"genres": 0})


def test_excluded_values_match_any_element_of_a_list_and_numbers_by_value() -> None:
    rules = Rules(exclude_values={"genres": ["Horror"], "year": [1995]})
    assert rules.excludes(Item("a", "A", attributes={"genres": ["Comedy", "Horror"]}))
    assert rules.excludes(Item("b", "B", attributes={"year": 1995.0}))
    assert not rules.excludes(Item("c", "C", attributes={"genres": ["horror"]}))  # exact match
    assert not rules.excludes(Item("d", "D"))


def test_the_index_follows_an_item_whose_attributes_change() -> None:
    index = RuleIndex(Rules(exclude_values={"genres": ["Horror"]}))
    index.update([0], [Item("a", "A", attributes={"genres": ["Horror"]})])
    assert index.allowed(1).tolist() == [False]
    index.update([0], [Item("a", "A", attributes={"genres": ["Comedy"]})])
    assert index.allowed(1).tolist() == [True]


# -- diversity in the recommender ----------------------------------------------------------


def test_diversity_zero_lists_equal_those_without_the_setting(
    space_fan: Callable[..., Recommender],
) -> None:
    plain, zero = space_fan(), space_fan(diversity=0.0, rerank_pool=3)
    a, b = plain.recommend(["u1", "u2"], 6)[0], zero.recommend(["u1", "u2"], 6)[0]
    assert a.items == b.items


def test_diversity_makes_lists_less_alike_in_content(
    space_fan: Callable[..., Recommender],
) -> None:
    plain, diverse = space_fan(), space_fan(diversity=0.7)
    vectors = plain.items.embeddings

    def ild(rec: Recommender) -> float:
        rows = [rec.items.row_of(i) for i in listed(rec, 4)]
        value = intra_list_diversity(vectors[rows])
        assert value is not None
        return value

    assert listed(plain, 1) == listed(diverse, 1)  # the most relevant item still leads
    assert set(listed(plain, 4)) <= {"s2", "s3", "s4", "s5", "w2"}  # all space or war
    assert ild(diverse) > ild(plain)


def test_because_names_the_history_item_behind_each_re_ranked_item(
    space_fan: Callable[..., Recommender], make_event: MakeEvent
) -> None:
    rec = space_fan(diversity=0.6)
    rec.learn([make_event("u1", "m1"), make_event("u1", "r1")])
    recs = rec.recommend(["u1"], 6)[0].items
    rows = torch.tensor([[rec.items.row_of(it.item_id) for it in recs]])
    expected = rec._because_many([rec.users.row("u1")], rows)[0]
    assert [it.because for it in recs] == expected
    assert {it.because for it in recs} <= {"s1", "m1", "r1"}


# -- business rules in the recommender -----------------------------------------------------


def test_excluded_item_ids_are_never_recommended_and_lists_stay_full(
    space_fan: Callable[..., Recommender],
) -> None:
    rec = space_fan(rules=Rules(exclude_items=["s2", "s3"]))
    got = listed(rec, 6)
    assert len(got) == 6 and not {"s2", "s3"} & set(got)
    assert len(listed(rec, 20)) == len(CATALOG) - 1 - 2  # every other item but the clicked one


def test_items_with_an_excluded_attribute_value_are_never_recommended(
    space_fan: Callable[..., Recommender],
) -> None:
    rec = space_fan(rules=Rules(exclude_values={"genres": ["War", "Horror"]}))
    got = listed(rec, 20)
    assert got and all(not GENRES[i] & {"War", "Horror"} for i in got)
    assert len(got) == sum(1 for g in GENRES.values() if not g & {"War", "Horror"})


def test_at_most_n_items_per_attribute_value_and_the_list_back_fills(
    space_fan: Callable[..., Recommender],
) -> None:
    rec = space_fan(rules=Rules(max_per_value={"genres": 2}))
    got = listed(rec, 8)
    per_genre = Counter(g for i in got for g in GENRES[i])
    assert len(got) == 8 and max(per_genre.values()) <= 2
    # Without the cap the first list is SciFi-heavy: the cap pushed later items in.
    assert Counter(g for i in listed(space_fan(), 8) for g in GENRES[i])["SciFi"] > 2


def test_caps_back_fill_beyond_a_small_pool_from_the_whole_catalog(
    space_fan: Callable[..., Recommender],
) -> None:
    rec = space_fan(rerank_pool=4, rules=Rules(max_per_value={"genres": 1}))
    got = listed(rec, 5)
    assert len(got) == 5  # the top 4 are mostly SciFi: the rest came from beyond the pool
    assert max(Counter(g for i in got for g in GENRES[i]).values()) == 1


def test_rules_and_diversity_combine(space_fan: Callable[..., Recommender]) -> None:
    rules = Rules(["r1"], {"genres": ["Horror"]}, {"genres": 2})
    rec = space_fan(diversity=0.5, rules=rules)
    got = listed(rec, 6)
    assert len(got) == 6 and "r1" not in got
    assert all("Horror" not in GENRES[i] for i in got)
    assert max(Counter(g for i in got for g in GENRES[i]).values()) <= 2


def test_a_list_is_short_only_when_too_few_items_are_eligible(
    space_fan: Callable[..., Recommender],
) -> None:
    # One item per genre at most, every item has SciFi, Romance, Western, Musical or Comedy
    # (or War alongside): at most as many items as those genres allow.
    rec = space_fan(rules=Rules(exclude_values={"genres": ["SciFi"]}, max_per_value={"genres": 1}))
    got = listed(rec, 10)
    assert 0 < len(got) < 10
    assert max(Counter(g for i in got for g in GENRES[i]).values()) == 1


def test_an_item_changed_into_an_excluded_value_leaves_the_lists(
    space_fan: Callable[..., Recommender],
) -> None:
    rec = space_fan(rules=Rules(exclude_values={"genres": ["Horror"]}))
    assert "s2" in listed(rec, 3)
    rec.upsert_items([Item("s2", "Alien war in space", attributes={"genres": ["Horror"]})])
    assert "s2" not in listed(rec, 20)


def test_rules_do_not_change_training(
    space_fan: Callable[..., Recommender], make_event: MakeEvent
) -> None:
    plain = space_fan()
    ruled = space_fan(rules=Rules(["s2"], {"genres": ["War"]}, {"genres": 1}), diversity=0.5)
    for rec in (plain, ruled):
        rec.learn([make_event("u1", "s3"), make_event("u2", "r1"), make_event("u2", "r2")])
    for name in ("U", "V", "mix", "delta", "bias"):
        assert torch.equal(getattr(plain.head, name), getattr(ruled.head, name)), name


# -- the worker ----------------------------------------------------------------------------


def test_the_worker_publishes_lists_that_obey_the_rules(
    make_worker: Callable[..., WorkerRig],
    make_recommender: MakeRecommender,
    event_record: Callable[..., Record],
) -> None:
    rules = Rules(["s3"], {"genres": ["Horror"]}, {"genres": 2})
    rec = make_recommender(items=ITEMS, min_events=1, rules=rules)
    records = [
        event_record(n, user=u, item=i)
        for n, (u, i) in enumerate([("u1", "s1"), ("u2", "r1"), ("u1", "s2"), ("u3", "w1")])
    ]
    rig = make_worker(source=InMemorySource(records), recommender=rec, top_k=5, batch_size=2)
    rig.worker.run(until=lambda: rig.source.exhausted)
    assert rig.publisher.published
    for sent in rig.publisher.published:
        got = [it.item_id for it in sent.items]
        assert len(got) == 5, sent
        assert "s3" not in got and all("Horror" not in GENRES[i] for i in got)
        assert max(Counter(g for i in got for g in GENRES[i]).values()) <= 2
