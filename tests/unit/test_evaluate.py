"""The prequential harness: hand-computed metrics, slices, the protocol, tuning and outputs."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence, Set
from pathlib import Path
from typing import Any

import pytest

from learner.evaluate import (
    EvalResult,
    ProtocolError,
    TuningRecord,
    cold_flags,
    coverage,
    evaluate_stream,
    hit_at_k,
    markdown_table,
    moving_average,
    mrr_at_k,
    ndcg_at_k,
    precision_recall_f1,
    rank_of,
    seeded_sample,
    split_index,
    tune,
    write_outputs,
)
from learner.stream_model import StreamModel
from learner.types import Event, Item

ROW_KEYS = {
    "model",
    "split",
    "slice",
    "hr@10",
    "ndcg@10",
    "mrr@10",
    "precision@10",
    "recall@10",
    "f1@10",
    "coverage@10",
    "events",
    "events_per_s",
}


def stream(pairs: Sequence[tuple[str, str]]) -> list[Event]:
    """Events ``(user, item)`` one second apart, in the given order."""
    return [
        Event(f"e{n}", user, item, "click", None, n * 1000) for n, (user, item) in enumerate(pairs)
    ]


class Scripted:
    """Returns ``lists[n]`` for the n-th ``rank`` call; remembers nothing else."""

    name = "scripted"

    def __init__(self, lists: Sequence[list[str]]) -> None:
        self.lists = list(lists)
        self.calls = 0

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        out = self.lists[self.calls]
        self.calls += 1
        return out

    def learn_one(self, event: Event) -> None:
        pass


class Pool:
    """Lists the items of a fixed pool that the user has not consumed, in pool order."""

    name = "pool"

    def __init__(self, pool: Sequence[str]) -> None:
        self.pool = list(pool)

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        return [item for item in self.pool if item not in exclude][:k]

    def learn_one(self, event: Event) -> None:
        pass


class Spy:
    """Records, at every ``rank``, how many events it had learned and what it had to exclude."""

    name = "spy"

    def __init__(self) -> None:
        self.learned: list[Event] = []
        self.rank_calls: list[tuple[str, int, frozenset[str]]] = []

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        self.rank_calls.append((user_id, len(self.learned), frozenset(exclude)))
        return []

    def learn_one(self, event: Event) -> None:
        self.learned.append(event)


def row(result: EvalResult, split: str, slice_name: str) -> dict[str, Any]:
    (found,) = [r for r in result.rows() if r["split"] == split and r["slice"] == slice_name]
    return found


# --------------------------------------------------------------------------------------------
# Per-event and per-user metrics
# --------------------------------------------------------------------------------------------


def test_item_at_rank_3_scores_ndcg_half_and_mrr_a_third() -> None:
    rank = rank_of("c", ["a", "b", "c", "d"])
    assert rank == 3
    assert hit_at_k(rank) == 1.0
    assert ndcg_at_k(rank) == pytest.approx(0.5)
    assert mrr_at_k(rank) == pytest.approx(1 / 3)


def test_item_at_rank_1_scores_one_and_a_miss_scores_zero() -> None:
    assert (hit_at_k(1), ndcg_at_k(1), mrr_at_k(1)) == (1.0, 1.0, 1.0)
    assert rank_of("z", ["a", "b"]) is None
    assert (hit_at_k(None), ndcg_at_k(None), mrr_at_k(None)) == (0.0, 0.0, 0.0)
    assert ndcg_at_k(7) == pytest.approx(1 / 3)  # log2(8) = 3


def test_precision_recall_f1_of_one_user() -> None:
    precision, recall, f1 = precision_recall_f1(hits=1, n_events=2, k=2)
    assert (precision, recall) == (0.25, 0.5)
    assert f1 == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        precision_recall_f1(0, 0, 10)


def test_coverage_counts_distinct_items_over_catalog() -> None:
    assert coverage({"a", "b"}, catalog_size=8) == 0.25
    with pytest.raises(ValueError):
        coverage(set(), catalog_size=0)


def test_moving_average_uses_trailing_full_windows() -> None:
    assert moving_average([1, 1, 0, 0], window=2) == [1.0, 0.5, 0.0]
    assert moving_average([1, 0, 1], window=1) == [1.0, 0.0, 1.0]


def test_split_index_puts_indices_below_fraction_times_n_in_tune() -> None:
    assert split_index(10, 0.2) == 2
    assert split_index(11, 0.2) == 3  # 0, 1, 2 < 2.2
    assert split_index(3000, 0.2) == 600
    assert split_index(5, 0.0) == 0 and split_index(5, 1.0) == 5


def test_seeded_sample_is_fixed_by_its_seed() -> None:
    a = seeded_sample(1000, 50, seed=1)
    assert a == seeded_sample(1000, 50, seed=1)
    assert a != seeded_sample(1000, 50, seed=2)
    assert len(a) == 50 and all(0 <= i < 1000 for i in a)


# --------------------------------------------------------------------------------------------
# Aggregation by evaluate_stream
# --------------------------------------------------------------------------------------------


def test_per_event_and_per_user_averages_match_hand_computation() -> None:
    events = stream([("u1", "a"), ("u1", "b"), ("u2", "c")])
    lists = [["x", "a"], ["y", "z"], ["c", "x"]]  # hit at 2, miss, hit at 1
    result = evaluate_stream(Scripted(lists), events, k=2, catalog_size=10, tune_fraction=0.0)
    test = row(result, "test", "all")
    assert test["events"] == 3
    assert test["hr@2"] == pytest.approx(2 / 3)
    assert test["ndcg@2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert test["mrr@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    # u1: 1 hit in 2 events -> p = 1/4, r = 1/2, f1 = 1/3
    # u2: 1 hit in 1 event -> p = 1/2, r = 1, f1 = 2/3
    assert test["precision@2"] == pytest.approx((0.25 + 0.5) / 2)
    assert test["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert test["f1@2"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert test["coverage@2"] == pytest.approx(5 / 10)  # x, a, y, z, c


def test_rows_have_exactly_the_metrics_json_schema() -> None:
    events = stream([("u1", "a"), ("u2", "b")] * 5)
    result = evaluate_stream(Pool(["a", "b"]), events, catalog_size=2)
    rows = result.rows()
    assert [(r["split"], r["slice"]) for r in rows] == [
        (split, name)
        for split in ("tune", "test")
        for name in ("all", "cold_users", "cold_items", "warm")
    ]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert all(r["model"] == "pool" and r["events_per_s"] > 0 for r in rows)
    json.dumps(rows)  # plain JSON types only


def test_metric_names_carry_the_actual_k() -> None:
    result = evaluate_stream(Scripted([["a"]]), stream([("u", "a")]), k=5, catalog_size=1)
    assert "ndcg@5" in result.rows()[0] and "ndcg@10" not in result.rows()[0]


def test_first_fraction_of_events_is_the_tune_split() -> None:
    events = stream([("u", f"i{n}") for n in range(10)])
    result = evaluate_stream(Scripted([[]] * 10), events, catalog_size=10, tune_fraction=0.2)
    assert row(result, "tune", "all")["events"] == 2
    assert row(result, "test", "all")["events"] == 8
    assert result.test_positions == list(range(2, 10))


def test_cold_flags_count_users_first_five_and_items_with_under_five_prior_events() -> None:
    # u1 touches a six times, then u2 touches a once.
    events = stream([("u1", "a")] * 6 + [("u2", "a")])
    cold_user, cold_item = cold_flags(events)
    assert cold_user == [True] * 5 + [False, True]
    assert cold_item == [True] * 5 + [False, False]


def test_slices_split_events_into_cold_users_cold_items_and_warm() -> None:
    # u0 makes 7 events on items seen >= 5 times before by u1..u5 (so item-warm);
    # each u1..u5 makes 5 cold-user events.
    warmup = [(f"u{n}", item) for n in range(1, 6) for item in ("a", "b", "c", "d", "e")]
    events = stream(warmup + [("u0", item) for item in "abcdeab"])
    result = evaluate_stream(Scripted([[]] * len(events)), events, catalog_size=5, tune_fraction=0)
    assert row(result, "test", "all")["events"] == 32
    assert row(result, "test", "cold_users")["events"] == 25 + 5
    assert row(result, "test", "cold_items")["events"] == 25  # items a..e during warm-up
    assert row(result, "test", "warm")["events"] == 2  # u0's 6th and 7th events


def test_cold_definitions_count_the_tune_part_of_the_stream() -> None:
    events = stream([("u", "a")] * 10)
    result = evaluate_stream(Scripted([[]] * 10), events, catalog_size=1, tune_fraction=0.5)
    assert row(result, "tune", "cold_users")["events"] == 5
    assert row(result, "test", "cold_users")["events"] == 0
    assert row(result, "test", "warm")["events"] == 5


def test_test_hits_sequence_follows_the_test_stream() -> None:
    events = stream([("u", "a"), ("u", "b"), ("u", "c"), ("u", "d")])
    lists = [[], ["b"], ["x"], ["d"]]
    result = evaluate_stream(Scripted(lists), events, catalog_size=4, tune_fraction=0.5)
    assert result.test_positions == [2, 3]
    assert result.test_hits == [0, 1]


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


def test_no_event_is_scored_with_state_that_has_seen_it() -> None:
    events = stream([("u1", "a"), ("u2", "a"), ("u1", "b"), ("u1", "c"), ("u2", "b")])
    spy = Spy()
    evaluate_stream(spy, events, catalog_size=3)
    assert [learned for _, learned, _ in spy.rank_calls] == [0, 1, 2, 3, 4]
    assert spy.learned == events


def test_consumed_items_are_passed_as_exclude() -> None:
    events = stream([("u1", "a"), ("u2", "a"), ("u1", "b"), ("u1", "c"), ("u2", "b")])
    spy = Spy()
    evaluate_stream(spy, events, catalog_size=3)
    assert [(user, set(exclude)) for user, _, exclude in spy.rank_calls] == [
        ("u1", set()),
        ("u2", set()),
        ("u1", {"a"}),
        ("u1", {"a", "b"}),
        ("u2", {"a"}),
    ]


def test_rank_sample_ranks_only_those_events_but_learns_all() -> None:
    events = stream([("u", f"i{n}") for n in range(10)])
    spy = Spy()
    result = evaluate_stream(spy, events, catalog_size=10, rank_sample={1, 4, 9})
    assert [learned for _, learned, _ in spy.rank_calls] == [1, 4, 9]
    assert len(spy.learned) == 10
    assert row(result, "tune", "all")["events"] + row(result, "test", "all")["events"] == 3
    assert "3 of 10" in result.note


@pytest.mark.parametrize(
    ("bad_list", "reason"),
    [(["a"], "consumed"), (["x", "x"], "duplicate"), (["x", "y", "z"], "returned 3 items")],
)
def test_a_list_that_breaks_the_contract_raises(bad_list: list[str], reason: str) -> None:
    events = stream([("u", "a"), ("u", "b")])
    with pytest.raises(ProtocolError, match=reason):
        evaluate_stream(Scripted([[], bad_list]), events, k=2, catalog_size=3)


def test_catalog_aware_models_get_the_items_first() -> None:
    class WantsCatalog(Spy):
        def set_catalog(self, items: Sequence[Item]) -> None:
            self.catalog = [item.item_id for item in items]

    model = WantsCatalog()
    evaluate_stream(
        model, stream([("u", "a")]), catalog_size=2, items=[Item("a", "A"), Item("b", "B")]
    )
    assert model.catalog == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Tuning
# --------------------------------------------------------------------------------------------


class Oracle:
    """Knows the stream in advance; with ``good`` it lists the next event's item."""

    name = "oracle"

    def __init__(self, events: Sequence[Event], good: bool) -> None:
        self.events, self.good, self.learned = events, good, 0

    def rank(self, user_id: str, k: int, exclude: Set[str]) -> list[str]:
        nxt = self.events[self.learned].item_id
        return [nxt] if self.good and nxt not in exclude else []

    def learn_one(self, event: Event) -> None:
        self.learned += 1


def test_tune_picks_the_best_grid_point_using_only_the_tune_prefix() -> None:
    events = stream([(f"u{n % 3}", f"i{n}") for n in range(50)])
    built: list[Oracle] = []

    def factory(params: dict[str, Any]) -> StreamModel:
        built.append(Oracle(events, **params))
        return built[-1]

    best, trials = tune(factory, {"good": [False, True]}, events, k=10, catalog_size=50)
    assert best == {"good": True}
    assert [t["params"] for t in trials] == [{"good": False}, {"good": True}]
    assert trials[1]["ndcg@10"] == 1.0 and trials[0]["ndcg@10"] == 0.0
    assert all(model.learned == 10 for model in built)  # 20% of 50, nothing after
    assert all(t["events"] == 5 for t in trials)  # the burn-in half is not scored


def test_tune_breaks_ties_towards_the_first_grid_point_and_accepts_an_empty_grid() -> None:
    events = stream([("u", f"i{n}") for n in range(20)])
    best, trials = tune(lambda p: Spy(), {"x": [3, 1, 2]}, events, catalog_size=20)
    assert best == {"x": 3} and len(trials) == 3
    best, trials = tune(lambda p: Spy(), {}, events, catalog_size=20)
    assert best == {} and len(trials) == 1


def test_tune_with_a_rank_sample_scores_that_many_events() -> None:
    events = stream([("u", f"i{n}") for n in range(100)])
    spy = Spy()
    _, trials = tune(lambda p: spy, {}, events, catalog_size=100, rank_sample_size=4, seed=3)
    assert trials[0]["events"] == 4
    assert all(10 <= learned < 20 for _, learned, _ in spy.rank_calls)


def test_tune_rejects_an_unknown_metric() -> None:
    events = stream([("u", f"i{n}") for n in range(20)])
    with pytest.raises(ValueError, match="unknown metric"):
        tune(lambda p: Spy(), {}, events, catalog_size=20, metric="auc")


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def small_result() -> EvalResult:
    pairs = [(f"u{n % 4}", f"i{n % 7}") for n in range(40)]
    return evaluate_stream(Pool(["i0", "i1", "i2"]), stream(pairs), catalog_size=7)


def test_markdown_table_formats_rows() -> None:
    table = markdown_table([{"model": "m", "hr@10": 0.5, "events": 2, "events_per_s": 1234.5}])
    assert table.splitlines() == [
        "| model | hr@10 | events | events_per_s |",
        "|---|---|---|---|",
        "| m | 0.5000 | 2 | 1234.5 |",
    ]
    assert markdown_table([]) == ""


def test_write_outputs_writes_metrics_json_and_results_md(tmp_path: Path) -> None:
    tuning = {"pool": TuningRecord(grid={"n": [1, 2]}, chosen={"n": 2}, metric="ndcg@10")}
    written = write_outputs(
        [small_result()], tmp_path, tuning=tuning, seed=7, command="freshrec evaluate", plot=False
    )
    assert written == [tmp_path / "metrics.json", tmp_path / "results.md"]
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rows) == 8 and set(rows[0]) == ROW_KEYS
    markdown = (tmp_path / "results.md").read_text()
    assert "freshrec evaluate" in markdown and "Seed: 7" in markdown
    assert "n=[1, 2]" in markdown and "n=2" in markdown
    assert markdown.count("| pool | test |") == 4
    assert "| pool | tune |" not in markdown


def test_write_outputs_draws_the_moving_hr_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = write_outputs([small_result()], tmp_path, window=4)
    assert (tmp_path / "hr_moving.png").read_bytes()[:4] == b"\x89PNG"
    assert tmp_path / "hr_moving.png" in written


def test_write_outputs_without_matplotlib_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        write_outputs([small_result()], tmp_path)
    assert (tmp_path / "metrics.json").exists()
