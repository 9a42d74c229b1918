"""The baselines: one contract suite for all, what each learns on a tiny stream, an ml-100k run."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest

from learner.baselines import (
    ISGD,
    RIVER_RANK_SAMPLE,
    ItemKNN,
    Popularity,
    RiverBiasedMF,
    Trending,
    seeded_sample,
)
from learner.evaluate import evaluate_stream
from learner.stream_model import CatalogAware, StreamModel
from learner.types import Event, Item

CATALOG = [Item(f"i{n}", f"Item {n}") for n in range(12)]
HOUR_MS = 3_600_000
M = TypeVar("M", bound=StreamModel)

FACTORIES: dict[str, Callable[[], StreamModel]] = {
    "popularity": Popularity,
    "trending": lambda: Trending(half_life_s=3600.0),
    "itemknn": ItemKNN,
    "itemknn_recent": lambda: ItemKNN(recent_n=3),
    "itemknn_alpha": lambda: ItemKNN(alpha=2.0),
    "itemknn_shrink": lambda: ItemKNN(shrink=2.0, alpha=1.5),
    "isgd": lambda: ISGD(factors=4, seed=1),
    "river_biasedmf": lambda: RiverBiasedMF(n_factors=4, seed=1),
}


def stream(pairs: Sequence[tuple[str, str]], step_ms: int = 1000) -> list[Event]:
    """Events ``(user, item)`` ``step_ms`` apart, rated 4."""
    return [
        Event(f"e{n}", user, item, "rating", 4.0, n * step_ms)
        for n, (user, item) in enumerate(pairs)
    ]


def random_stream(n: int = 200, seed: int = 0) -> list[Event]:
    rng = random.Random(seed)
    pairs = [(f"u{rng.randrange(8)}", f"i{rng.randrange(12)}") for _ in range(n)]
    return stream(pairs)


def learned(model: M, events: Sequence[Event]) -> M:
    for event in events:
        model.learn_one(event)
    return model


# --------------------------------------------------------------------------------------------
# The contract every baseline meets
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[[], StreamModel]:
    return FACTORIES[request.param]


def test_baselines_are_catalog_aware_stream_models(make: Callable[[], StreamModel]) -> None:
    model = make()
    assert isinstance(model, StreamModel) and isinstance(model, CatalogAware)
    assert model.name in {
        "popularity",
        "trending",
        "itemknn",
        "itemknn_recent",
        "isgd",
        "river_biasedmf",
    }


def test_baselines_keep_the_rank_contract_through_a_prequential_pass(
    make: Callable[[], StreamModel],
) -> None:
    # evaluate_stream raises ProtocolError on long lists, duplicates or consumed items.
    result = evaluate_stream(make(), random_stream(), k=5, catalog_size=12, items=CATALOG)
    assert result.rows()[0]["events"] > 0


def test_baselines_fill_the_list_from_the_catalog(make: Callable[[], StreamModel]) -> None:
    model = make()
    assert isinstance(model, CatalogAware)
    model.set_catalog(CATALOG)
    learned(model, stream([("u1", "i3"), ("u2", "i3"), ("u1", "i4")]))
    ranked = model.rank("u1", 10, {"i3", "i4"})
    assert len(ranked) == 10 and not {"i3", "i4"} & set(ranked)
    assert len(model.rank("someone_new", 5, set())) == 5


def test_baselines_rank_the_same_when_asked_twice(make: Callable[[], StreamModel]) -> None:
    model = learned(make(), random_stream())
    for user in ("u0", "u3", "never_seen"):
        assert model.rank(user, 5, {"i1"}) == model.rank(user, 5, {"i1"})


def test_ranking_does_not_change_what_a_baseline_learns(make: Callable[[], StreamModel]) -> None:
    if make is FACTORIES["river_biasedmf"]:
        pytest.skip("River's predict_one draws the vector of a user it has not seen yet")
    events = random_stream()
    quiet, busy = make(), make()
    for event in events:
        busy.rank(event.user_id, 5, set())
        quiet.learn_one(event)
        busy.learn_one(event)
    assert [quiet.rank(u, 5, set()) for u in ("u0", "u5")] == [
        busy.rank(u, 5, set()) for u in ("u0", "u5")
    ]


def test_baselines_survive_pickling(make: Callable[[], StreamModel]) -> None:
    model = learned(make(), random_stream())
    copy = pickle.loads(pickle.dumps(model))
    assert copy.rank("u2", 5, set()) == model.rank("u2", 5, set())


def test_baselines_are_reproducible(make: Callable[[], StreamModel]) -> None:
    events = random_stream(seed=4)
    a, b = learned(make(), events), learned(make(), events)
    assert [a.rank(f"u{n}", 5, set()) for n in range(8)] == [
        b.rank(f"u{n}", 5, set()) for n in range(8)
    ]


# --------------------------------------------------------------------------------------------
# What each one learns
# --------------------------------------------------------------------------------------------


def test_popularity_ranks_by_count_then_catalog_order() -> None:
    model = Popularity()
    model.set_catalog(CATALOG[:4])
    learned(model, stream([("u1", "i2"), ("u2", "i2"), ("u3", "i1")]))
    assert model.rank("u9", 4, set()) == ["i2", "i1", "i0", "i3"]
    assert model.rank("u9", 2, {"i2"}) == ["i1", "i0"]


def test_trending_prefers_recent_events_and_long_half_lives_approach_popularity() -> None:
    # Three old events of i1, one event of i2 three hours later.
    events = stream([("u1", "i1"), ("u2", "i1"), ("u3", "i1")], step_ms=0)
    events.append(Event("late", "u4", "i2", "rating", 4.0, 3 * HOUR_MS))
    short = learned(Trending(half_life_s=3600.0), events)
    long = learned(Trending(half_life_s=30 * 86400.0), events)
    assert short.rank("u", 2, set()) == ["i2", "i1"]  # 3 * 2**-3 < 1
    assert long.rank("u", 2, set()) == ["i1", "i2"]


def test_trending_survives_streams_spanning_thousands_of_half_lives() -> None:
    model = Trending(half_life_s=1.0)
    events = [Event(str(n), "u", f"i{n % 3}", "click", None, n * 100_000) for n in range(3000)]
    learned(model, events)
    assert model.rank("u", 3, set())[0] == "i2"  # the newest event
    assert np.isfinite(model._weights).all()


def test_itemknn_recommends_the_co_occurring_item() -> None:
    pairs = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"), ("u3", "i5"), ("u4", "i5")]
    pairs += [("u5", "i5"), ("u6", "i1")]
    model = learned(ItemKNN(), stream(pairs))
    assert model.rank("u6", 2, {"i1"}) == ["i2", "i5"]  # i5 is only more popular


def test_itemknn_scores_are_the_cosine_of_co_occurrence_counts() -> None:
    pairs = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "b"), ("u3", "a")]
    model = learned(ItemKNN(), stream(pairs))
    # n_a = 3, n_b = 2, n_c = 1; C_ab = 2, C_ac = 1; u2's history is {a, c}.
    scores = dict(zip(["a", "b", "c"], model.scores("u2"), strict=True))
    assert scores["b"] == pytest.approx(2 / np.sqrt(3 * 2) + 0.0)
    assert scores["a"] == pytest.approx(1 / np.sqrt(3 * 1))  # from c only; C_aa = 0
    squared = learned(ItemKNN(alpha=2.0), stream(pairs))
    assert squared.scores("u2")[1] == pytest.approx((2 / np.sqrt(6)) ** 2)
    shrunk = learned(ItemKNN(shrink=1.0, alpha=2.0), stream(pairs))
    assert shrunk.scores("u2")[1] == pytest.approx((2 / (np.sqrt(6) + 1)) ** 2)


def test_itemknn_recent_uses_only_the_last_n_items() -> None:
    # i1 co-occurs with i8, i2 with i9; u9's history is i1 then i2.
    pairs = [("u1", "i1"), ("u1", "i8"), ("u2", "i2"), ("u2", "i9"), ("u9", "i1"), ("u9", "i2")]
    whole = learned(ItemKNN(), stream(pairs))
    recent = learned(ItemKNN(recent_n=1), stream(pairs))
    assert recent.name == "itemknn_recent" and whole.name == "itemknn"
    assert set(whole.rank("u9", 2, {"i1", "i2"})) == {"i8", "i9"}
    assert recent.rank("u9", 1, {"i1", "i2"}) == ["i9"]


def test_itemknn_recent_counts_co_occurrence_only_within_the_window() -> None:
    pairs = [("u1", "i1"), ("u1", "i2"), ("u1", "i3")]
    model = learned(ItemKNN(recent_n=1), stream(pairs))
    assert model._cooc[0, 2] == 0 and model._cooc[1, 2] == 1


def test_isgd_one_step_follows_the_papers_update() -> None:
    lr, reg, factors, seed = 0.1, 0.05, 3, 11
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0.0, 0.1, factors), rng.normal(0.0, 0.1, factors)
    err = 1.0 - p @ q
    p = p + lr * (err * q - reg * p)
    q = q + lr * (err * p - reg * q)  # with the updated p, as in Algorithm 1
    model = learned(ISGD(factors=factors, lr=lr, reg=reg, seed=seed), stream([("u", "a")]))
    assert model.predict("u", "a") == pytest.approx(float(p @ q))


def test_isgd_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    events = random_stream(seed=2)
    a, b = learned(ISGD(seed=5), events), learned(ISGD(seed=5), events)
    c = learned(ISGD(seed=6), events)
    assert [a.predict(f"u{n}", "i0") for n in range(8)] == [
        b.predict(f"u{n}", "i0") for n in range(8)
    ]
    assert a.predict("u0", "i0") != c.predict("u0", "i0")


def test_isgd_moves_predictions_of_positive_pairs_towards_one() -> None:
    events = stream([("u1", "i1"), ("u1", "i2")] * 40 + [("u2", "i1")] * 40)
    model = learned(ISGD(factors=4, lr=0.1, reg=0.01, seed=0), events)
    assert model.predict("u2", "i1") == pytest.approx(1.0, abs=0.05)
    assert model.rank("u2", 1, {"i1"}) == ["i2"]  # shares i1's direction through u1
    assert model.rank("nobody", 1, set()) == ["i1"]  # popularity for unseen users


def test_river_biasedmf_learns_through_rivers_api_on_rating_values() -> None:
    from river import reco

    model = RiverBiasedMF(n_factors=4, lr=0.05, seed=0)
    events = [
        Event(f"e{n}", f"u{n % 5}", item, "rating", rating, n)
        for n, (item, rating) in enumerate([("good", 5.0), ("bad", 1.0)] * 50)
    ]
    learned(model, events)
    assert isinstance(model.model, reco.BiasedMF)
    inner: Any = model.model
    assert inner.global_mean.get() == pytest.approx(3.0)
    assert model.rank("u_new", 2, set()) == ["good", "bad"]
    assert inner.predict_one(user="u0", item="good") > inner.predict_one(user="u0", item="bad")


def test_river_rank_sample_is_a_fixed_seeded_sample() -> None:
    assert RIVER_RANK_SAMPLE == 2000
    sample = seeded_sample(100_000, RIVER_RANK_SAMPLE, seed=0)
    assert len(sample) == 2000 and sample == seeded_sample(100_000, 2000, seed=0)


# --------------------------------------------------------------------------------------------
# End to end on the start of ml-100k
# --------------------------------------------------------------------------------------------


def test_baselines_on_the_first_3000_ml100k_events() -> None:
    from consumer.datasets import load_ml100k

    items, events = load_ml100k(progress=False)
    events = events[:3000]
    results = {
        model.name: evaluate_stream(model, events, catalog_size=len(items), items=items)
        for model in (Popularity(), ItemKNN(recent_n=20), ISGD(lr=0.1, reg=0.3, seed=0))
    }
    for result in results.values():
        test = result.metrics("test")
        assert result.stats[("test", "all")].events == 2400
        assert all(0.0 <= value <= 1.0 for value in test.values())
        assert result.events_per_s("test") > 0
    assert results["popularity"].metrics("test")["hr@10"] > 0.02
    assert results["itemknn_recent"].metrics("test")["hr@10"] > 0.05
