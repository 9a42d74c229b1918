"""Prequential (test-then-train) evaluation of stream models: metrics, slices, tuning, reports.

Every event is first *tested* (the model ranks the user's top-K from the state before the event,
excluding what the user already consumed, and the list is scored against the event's item) and
then *trained on* (``learn_one``). The first ``tune_fraction`` of the stream is the "tune" split,
the rest the "test" split; hyperparameters are chosen on the tune split only (:func:`tune`).

The harness does no I/O except :func:`write_outputs`, which writes a run's report files.

Examples
--------
>>> from learner.types import Event
>>> class LastSeen:
...     name = "last_seen"
...     def __init__(self): self.seen = []
...     def rank(self, user_id, k, exclude):
...         return [i for i in reversed(self.seen) if i not in exclude][:k]
...     def learn_one(self, event): self.seen.append(event.item_id)
>>> events = [Event(f"e{n}", u, i, "click", None, n) for n, (u, i) in
...           enumerate([("u1", "a"), ("u2", "a"), ("u2", "b"), ("u3", "b")])]
>>> result = evaluate_stream(LastSeen(), events, k=1, catalog_size=2, tune_fraction=0.0)
>>> row = result.rows()[4]  # test split, slice "all"
>>> row["split"], row["slice"], row["hr@1"], row["events"]
('test', 'all', 0.5, 4)
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from learner.exceptions import FreshrecError
from learner.stream_model import CatalogAware, ProfileAware, StreamModel
from learner.types import Event, Item, UserProfile

__all__ = [
    "COLD_THRESHOLD",
    "SLICES",
    "SPLITS",
    "EvalResult",
    "ItemFeatures",
    "ProtocolError",
    "Slice",
    "SliceStats",
    "Split",
    "TuningRecord",
    "cold_flags",
    "coverage",
    "evaluate_stream",
    "genre_coverage",
    "hit_at_k",
    "intra_list_diversity",
    "markdown_table",
    "moving_average",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_recall_f1",
    "rank_of",
    "seeded_sample",
    "split_index",
    "tradeoff_rows",
    "tune",
    "write_outputs",
    "write_tradeoff",
]

Split = Literal["tune", "test"]
Slice = Literal["all", "cold_users", "cold_items", "warm"]
SPLITS: tuple[Split, ...] = ("tune", "test")
SLICES: tuple[Slice, ...] = ("all", "cold_users", "cold_items", "warm")
# A user is cold for their first COLD_THRESHOLD events, an item while it has fewer prior events.
COLD_THRESHOLD = 5
_MOVING_WINDOW = 2000


class ProtocolError(FreshrecError):
    """A model broke the ``rank`` contract (too many items, duplicates, or an excluded item)."""


# --------------------------------------------------------------------------------------------
# Per-event and per-user metrics: pure functions
# --------------------------------------------------------------------------------------------


def rank_of(item_id: str, ranked: Sequence[str]) -> int | None:
    """The 1-based position of ``item_id`` in ``ranked``, or None when it is absent.

    Examples
    --------
    >>> rank_of("c", ["a", "b", "c"]), rank_of("z", ["a", "b", "c"])
    (3, None)
    """
    for position, candidate in enumerate(ranked, start=1):
        if candidate == item_id:
            return position
    return None


def hit_at_k(rank: int | None) -> float:
    """HR@k of one event: 1 when the item is in the top-k list (``rank`` is not None), else 0.

    Examples
    --------
    >>> hit_at_k(7), hit_at_k(None)
    (1.0, 0.0)
    """
    return 0.0 if rank is None else 1.0


def ndcg_at_k(rank: int | None) -> float:
    """NDCG@k of one event with one relevant item: ``1 / log2(rank + 1)``, 0 when absent.

    Examples
    --------
    >>> ndcg_at_k(1), ndcg_at_k(3), ndcg_at_k(None)
    (1.0, 0.5, 0.0)
    """
    return 0.0 if rank is None else 1.0 / math.log2(rank + 1)


def mrr_at_k(rank: int | None) -> float:
    """MRR@k of one event: ``1 / rank``, 0 when absent.

    Examples
    --------
    >>> mrr_at_k(4), mrr_at_k(None)
    (0.25, 0.0)
    """
    return 0.0 if rank is None else 1.0 / rank


def precision_recall_f1(hits: int, n_events: int, k: int) -> tuple[float, float, float]:
    """One user's precision@k, recall@k and F1@k over a split.

    The user had ``n_events`` scored events and ``hits`` of them were in the list shown just
    before: precision = hits / (k * n_events) (the user was shown k items per event),
    recall = hits / n_events, F1 their harmonic mean (0 when both are 0).

    Examples
    --------
    >>> p, r, f = precision_recall_f1(hits=2, n_events=4, k=10)
    >>> p, r, round(f, 6)
    (0.05, 0.5, 0.090909)
    >>> precision_recall_f1(0, 3, 10)
    (0.0, 0.0, 0.0)
    """
    if n_events <= 0:
        raise ValueError("a user with no events has no precision or recall")
    precision = hits / (k * n_events)
    recall = hits / n_events
    total = precision + recall
    f1 = 0.0 if total == 0.0 else 2.0 * precision * recall / total
    return precision, recall, f1


def coverage(recommended: Set[str], catalog_size: int) -> float:
    """Catalog coverage: distinct recommended items over the catalog size.

    Examples
    --------
    >>> coverage({"a", "b", "c"}, catalog_size=12)
    0.25
    """
    if catalog_size <= 0:
        raise ValueError("catalog_size must be positive")
    return len(recommended) / catalog_size


def intra_list_diversity(vectors: Tensor) -> float | None:
    """Mean pairwise ``1 - cosine`` of a list's item vectors (rows); None under two items.

    Examples
    --------
    >>> round(intra_list_diversity(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])), 6)
    0.666667
    >>> intra_list_diversity(torch.tensor([[1.0, 0.0]])) is None
    True
    """
    n = int(vectors.shape[0])
    if n < 2:
        return None
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    similarity = unit @ unit.T
    pairs = n * (n - 1)
    return float(1.0 - (similarity.sum() - similarity.diagonal().sum()) / pairs)


def genre_coverage(genres: Sequence[Set[str]], catalog_genres: int) -> float:
    """Share of the catalog's genres that a list's items carry between them.

    Examples
    --------
    >>> genre_coverage([{"Drama"}, {"Drama", "War"}, set()], catalog_genres=8)
    0.25
    """
    if catalog_genres <= 0:
        raise ValueError("catalog_genres must be positive")
    present: set[str] = set()
    for g in genres:
        present |= g
    return len(present) / catalog_genres


@dataclass(frozen=True)
class ItemFeatures:
    """What list diversity is measured on: each item's content vector and genres.

    Examples
    --------
    >>> feats = ItemFeatures.build(["a", "b"], torch.eye(2), [["Drama"], ["War", "Drama"]])
    >>> feats.diversity(["a", "b"]), feats.coverage(["a"]), feats.catalog_genres
    (1.0, 0.5, 2)
    """

    rows: Mapping[str, int]
    vectors: Tensor
    genres: Sequence[frozenset[str]]
    catalog_genres: int

    @classmethod
    def build(
        cls, item_ids: Sequence[str], vectors: Tensor, genres: Sequence[Sequence[str]]
    ) -> ItemFeatures:
        sets = [frozenset(g) for g in genres]
        every: set[str] = set()
        for g in sets:
            every |= g
        unit = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=-1)
        rows = {item_id: n for n, item_id in enumerate(item_ids)}
        return cls(rows, unit, sets, max(1, len(every)))

    def diversity(self, ranked: Sequence[str]) -> float | None:
        rows = [self.rows[i] for i in ranked if i in self.rows]
        return intra_list_diversity(self.vectors[rows]) if rows else None

    def coverage(self, ranked: Sequence[str]) -> float | None:
        sets = [self.genres[self.rows[i]] for i in ranked if i in self.rows]
        return genre_coverage(sets, self.catalog_genres) if sets else None


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means of ``values`` over ``window`` consecutive entries (full windows only).

    Examples
    --------
    >>> moving_average([1, 0, 1, 1, 0], window=2)
    [0.5, 0.5, 1.0, 0.5]
    >>> moving_average([1, 0], window=3)
    []
    """
    if window <= 0:
        raise ValueError("window must be positive")
    out: list[float] = []
    running = 0.0
    for position, value in enumerate(values):
        running += value
        if position >= window:
            running -= values[position - window]
        if position >= window - 1:
            out.append(running / window)
    return out


# --------------------------------------------------------------------------------------------
# Stream bookkeeping: splits, cold flags, samples
# --------------------------------------------------------------------------------------------


def split_index(n_events: int, fraction: float) -> int:
    """Number of leading events whose index ``i`` satisfies ``i < fraction * n_events``.

    Examples
    --------
    >>> split_index(100_000, 0.2), split_index(3000, 0.2), split_index(7, 0.5)
    (20000, 600, 4)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must lie in [0, 1]")
    # The epsilon keeps 0.2 * 3000 = 600.0000000000001 from counting event 600 as tune.
    return min(n_events, max(0, math.ceil(fraction * n_events - 1e-9)))


def cold_flags(
    events: Sequence[Event], threshold: int = COLD_THRESHOLD
) -> tuple[list[bool], list[bool]]:
    """Per event: is it among its user's first ``threshold`` events, does its item have fewer
    than ``threshold`` prior events? Both counted over ``events`` from its start.

    Examples
    --------
    >>> evs = [Event(str(n), "u", "a", "click", None, n) for n in range(3)]
    >>> cold_flags(evs, threshold=2)
    ([True, True, False], [True, True, False])
    """
    user_seen: dict[str, int] = defaultdict(int)
    item_seen: dict[str, int] = defaultdict(int)
    cold_user: list[bool] = []
    cold_item: list[bool] = []
    for event in events:
        cold_user.append(user_seen[event.user_id] < threshold)
        cold_item.append(item_seen[event.item_id] < threshold)
        user_seen[event.user_id] += 1
        item_seen[event.item_id] += 1
    return cold_user, cold_item


def seeded_sample(n_events: int, size: int, seed: int) -> set[int]:
    """A fixed random set of ``min(size, n_events)`` event indices in ``range(n_events)``.

    Used to rank only some events of a slow model (all events are still learned).

    Examples
    --------
    >>> sample = seeded_sample(100, 5, seed=7)
    >>> len(sample), sample == seeded_sample(100, 5, seed=7), max(sample) < 100
    (5, True, True)
    >>> seeded_sample(3, 10, seed=0)
    {0, 1, 2}
    """
    return set(random.Random(seed).sample(range(n_events), min(size, n_events)))


# --------------------------------------------------------------------------------------------
# Accumulators and results
# --------------------------------------------------------------------------------------------


@dataclass
class SliceStats:
    """Running sums of one (split, slice): per-event metrics, per-user hits, recommended items."""

    events: int = 0
    hits: int = 0
    ndcg: float = 0.0
    mrr: float = 0.0
    user_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    user_hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recommended: set[str] = field(default_factory=set)
    # Sums over the lists that had a value (two items or more; one item or more).
    ild: float = 0.0
    ild_lists: int = 0
    genres: float = 0.0
    genre_lists: int = 0

    def add(
        self,
        user_id: str,
        rank: int | None,
        ranked: Sequence[str],
        ild: float | None = None,
        genres: float | None = None,
    ) -> None:
        """Score one event whose item sat at ``rank`` (None: absent) of the list ``ranked``,
        with the list's intra-list diversity and genre coverage when measured."""
        if ild is not None:
            self.ild += ild
            self.ild_lists += 1
        if genres is not None:
            self.genres += genres
            self.genre_lists += 1
        self.events += 1
        self.user_events[user_id] += 1
        if rank is not None:
            self.hits += 1
            self.user_hits[user_id] += 1
        self.ndcg += ndcg_at_k(rank)
        self.mrr += mrr_at_k(rank)
        self.recommended.update(ranked)

    def metrics(self, k: int, catalog_size: int, diversity: bool = False) -> dict[str, float]:
        """Averages: per event (hr, ndcg, mrr), per user (precision, recall, f1), coverage;
        with ``diversity``, per list: intra-list diversity and genre coverage."""
        n = self.events
        per_user = [
            precision_recall_f1(self.user_hits.get(user, 0), count, k)
            for user, count in self.user_events.items()
        ]
        users = len(per_user)
        return {
            f"hr@{k}": self.hits / n if n else 0.0,
            f"ndcg@{k}": self.ndcg / n if n else 0.0,
            f"mrr@{k}": self.mrr / n if n else 0.0,
            f"precision@{k}": sum(p for p, _, _ in per_user) / users if users else 0.0,
            f"recall@{k}": sum(r for _, r, _ in per_user) / users if users else 0.0,
            f"f1@{k}": sum(f for _, _, f in per_user) / users if users else 0.0,
            f"coverage@{k}": coverage(self.recommended, catalog_size),
        } | (
            {
                f"ild@{k}": self.ild / self.ild_lists if self.ild_lists else 0.0,
                f"genre_coverage@{k}": self.genres / self.genre_lists if self.genre_lists else 0.0,
            }
            if diversity
            else {}
        )


def _empty_stats() -> dict[tuple[Split, Slice], SliceStats]:
    return {(split, name): SliceStats() for split in SPLITS for name in SLICES}


@dataclass
class EvalResult:
    """What one prequential pass of one model measured.

    ``seconds[split]`` is the time spent inside the model's ``rank`` and ``learn_one`` for the
    events of that split (harness bookkeeping excluded), ``processed[split]`` the number of
    events the model learned there. ``test_positions`` / ``test_hits`` are the stream index and
    the 0/1 hit of every scored test event, in order, for the moving HR@k curve.
    """

    model: str
    k: int
    catalog_size: int
    stats: dict[tuple[Split, Slice], SliceStats] = field(default_factory=_empty_stats)
    seconds: dict[Split, float] = field(default_factory=lambda: {"tune": 0.0, "test": 0.0})
    processed: dict[Split, int] = field(default_factory=lambda: {"tune": 0, "test": 0})
    test_positions: list[int] = field(default_factory=list)
    test_hits: list[int] = field(default_factory=list)
    note: str = ""
    # Whether lists were measured for intra-list diversity and genre coverage (ItemFeatures).
    diversity_measured: bool = False

    def events_per_s(self, split: Split) -> float:
        """Events learned (and ranked, where ranked) per second of model time in ``split``."""
        seconds = self.seconds[split]
        return self.processed[split] / seconds if seconds > 0 else 0.0

    def metrics(self, split: Split, slice_name: Slice = "all") -> dict[str, float]:
        """The metric averages of one (split, slice), keys such as ``"ndcg@10"``."""
        return self.stats[(split, slice_name)].metrics(
            self.k, self.catalog_size, self.diversity_measured
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per (split, slice), in the ``metrics.json`` schema."""
        rows: list[dict[str, Any]] = []
        for split in SPLITS:
            for name in SLICES:
                row: dict[str, Any] = {"model": self.model, "split": split, "slice": name}
                row.update(self.metrics(split, name))
                row["events"] = self.stats[(split, name)].events
                row["events_per_s"] = self.events_per_s(split)
                rows.append(row)
        return rows


def _check_ranked(ranked: Sequence[str], k: int, exclude: Set[str], model: str) -> None:
    if len(ranked) > k:
        raise ProtocolError(f"{model} returned {len(ranked)} items for k={k}")
    if len(set(ranked)) != len(ranked):
        raise ProtocolError(f"{model} returned duplicate items: {list(ranked)}")
    for item_id in ranked:
        if item_id in exclude:
            raise ProtocolError(f"{model} recommended {item_id!r}, which the user consumed")


# --------------------------------------------------------------------------------------------
# The prequential loop
# --------------------------------------------------------------------------------------------


def evaluate_stream(
    model: StreamModel,
    events: Sequence[Event],
    *,
    k: int = 10,
    catalog_size: int,
    tune_fraction: float = 0.2,
    rank_sample: Set[int] | None = None,
    progress: bool = False,
    items: Sequence[Item] | None = None,
    cold_threshold: int = COLD_THRESHOLD,
    features: ItemFeatures | None = None,
    profiles: Sequence[UserProfile] | None = None,
) -> EvalResult:
    """Replay ``events`` in order through ``model``, test-then-train, and score every list.

    For each event ``i``: ``model.rank(user, k, exclude=consumed[user])`` (skipped when
    ``rank_sample`` is given and ``i`` is not in it), score that list against the event's item,
    ``model.learn_one(event)``, then add the item to ``consumed[user]`` (``exclude`` is that
    live set: a model that keeps it must copy it). Events with
    ``i < tune_fraction * len(events)`` form the "tune" split, the others "test".

    Parameters
    ----------
    model
        The model, fresh: it must not have seen any of ``events``.
    events
        The stream, in time order.
    k
        List length.
    catalog_size
        Denominator of coverage@k.
    tune_fraction
        Leading fraction of the stream reported as the "tune" split.
    rank_sample
        Indices of the events to rank and score (for slow models); all events are learned.
    progress
        Show a tqdm bar on stderr.
    items
        The catalog; handed to ``model.set_catalog`` first when the model is
        :class:`~learner.stream_model.CatalogAware`.
    cold_threshold
        A user is cold for their first ``cold_threshold`` events; an item while it has fewer
        than ``cold_threshold`` prior events (both counted from the start of ``events``).
    features
        Item vectors and genres: each scored list is also measured for intra-list diversity
        (``ild@k``) and genre coverage (``genre_coverage@k``), outside the model's time.
    profiles
        Users' profiles; handed to ``model.set_profiles`` first when the model is
        :class:`~learner.stream_model.ProfileAware` (after the catalog).

    Raises
    ------
    ProtocolError
        When a list is longer than ``k``, repeats an item or holds a consumed item.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    if items is not None and isinstance(model, CatalogAware):
        model.set_catalog(items)
    if profiles is not None and isinstance(model, ProfileAware):
        model.set_profiles(profiles)
    n_tune = split_index(len(events), tune_fraction)
    cold_user, cold_item = cold_flags(events, cold_threshold)
    result = EvalResult(
        model=model.name, k=k, catalog_size=catalog_size, diversity_measured=features is not None
    )
    if rank_sample is not None:
        ranked_count = sum(1 for index in rank_sample if 0 <= index < len(events))
        result.note = f"ranked a seeded sample of {ranked_count} of {len(events)} events"
    consumed: dict[str, set[str]] = defaultdict(set)
    clock = time.perf_counter
    stream = tqdm(events, desc=model.name, unit="ev", disable=not progress, mininterval=1.0)
    for index, event in enumerate(stream):
        split: Split = "tune" if index < n_tune else "test"
        seen = consumed[event.user_id]
        ranked: list[str] | None = None
        started = clock()
        if rank_sample is None or index in rank_sample:
            # A copy: the list is scored after learn_one, which must not be able to change it.
            ranked = list(model.rank(event.user_id, k, seen))
        model.learn_one(event)
        result.seconds[split] += clock() - started
        result.processed[split] += 1
        if ranked is not None:
            _check_ranked(ranked, k, seen, model.name)
            rank = _score(
                result, split, event, ranked, cold_user[index], cold_item[index], features
            )
            if split == "test":
                result.test_positions.append(index)
                result.test_hits.append(0 if rank is None else 1)
        seen.add(event.item_id)
    return result


def _score(
    result: EvalResult,
    split: Split,
    event: Event,
    ranked: Sequence[str],
    cold_user: bool,
    cold_item: bool,
    features: ItemFeatures | None = None,
) -> int | None:
    rank = rank_of(event.item_id, ranked)
    ild = features.diversity(ranked) if features is not None else None
    genres = features.coverage(ranked) if features is not None else None
    slices: list[Slice] = ["all"]
    if cold_user:
        slices.append("cold_users")
    if cold_item:
        slices.append("cold_items")
    if not (cold_user or cold_item):
        slices.append("warm")
    for name in slices:
        result.stats[(split, name)].add(event.user_id, rank, ranked, ild, genres)
    return rank


# --------------------------------------------------------------------------------------------
# Tuning on the tune split only
# --------------------------------------------------------------------------------------------


def _grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def tune(
    factory: Callable[[dict[str, Any]], StreamModel],
    grid: Mapping[str, Sequence[Any]],
    events: Sequence[Event],
    *,
    k: int = 10,
    catalog_size: int,
    metric: str | None = None,
    tune_fraction: float = 0.2,
    burn_in: float = 0.5,
    rank_sample_size: int | None = None,
    seed: int = 0,
    items: Sequence[Item] | None = None,
    progress: bool = False,
    profiles: Sequence[UserProfile] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick hyperparameters on the tune split (``events[:tune_fraction]``) only.

    The budget is the same for every model: every point of the full ``grid`` (the Cartesian
    product, in the grid's key order) is one fresh model (``factory(params)``) and one
    prequential pass over the tune prefix. The first ``burn_in`` half of the prefix is learned
    without being scored (models start cold, as they do on the real stream); the metric is
    measured on the rest of the prefix. Ties go to the earlier grid point. No event after the
    prefix is ever read.

    Parameters
    ----------
    factory
        Builds a fresh model from one grid point.
    grid
        Hyperparameter name to candidate values; ``{}`` is a single trial with no parameters.
    events
        The whole stream; only its first ``tune_fraction`` is used.
    metric
        Row key to maximise, by default ``f"ndcg@{k}"``.
    burn_in
        Leading fraction of the prefix that is learned but not scored.
    rank_sample_size
        For slow models: score only a seeded sample of this many of the scored events.
    seed
        Seed of that sample.

    Returns
    -------
    tuple
        The best grid point, and one row per trial: ``{"params": {...}, <metrics of the scored
        part>, "events": scored events, "seconds": model time of the trial}``.
    """
    chosen_metric = metric if metric is not None else f"ndcg@{k}"
    prefix = events[: split_index(len(events), tune_fraction)]
    burn = split_index(len(prefix), burn_in)
    if burn >= len(prefix):
        raise ValueError("the tune prefix leaves no event to score; lower burn_in")
    if rank_sample_size is None:
        sample: set[int] = set(range(burn, len(prefix)))
    else:
        sample = {burn + i for i in seeded_sample(len(prefix) - burn, rank_sample_size, seed)}
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_value = -math.inf
    for params in _grid_points(grid):
        result = evaluate_stream(
            factory(dict(params)),
            prefix,
            k=k,
            catalog_size=catalog_size,
            tune_fraction=burn_in,
            rank_sample=sample,
            progress=progress,
            items=items,
            profiles=profiles,
        )
        scores = result.metrics("test", "all")
        if chosen_metric not in scores:
            raise ValueError(f"unknown metric {chosen_metric!r}; one of {sorted(scores)}")
        trial: dict[str, Any] = {"params": dict(params), **scores}
        trial["events"] = result.stats[("test", "all")].events
        trial["seconds"] = result.seconds["tune"] + result.seconds["test"]
        trials.append(trial)
        if scores[chosen_metric] > best_value:
            best, best_value = dict(params), scores[chosen_metric]
    assert best is not None  # the product of any grid has at least one point
    return best, trials


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuningRecord:
    """How one model's hyperparameters were chosen, for the report."""

    grid: Mapping[str, Sequence[Any]]
    chosen: Mapping[str, Any]
    metric: str
    trials: Sequence[Mapping[str, Any]] = ()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    if isinstance(value, Mapping):  # hyperparameters: exact values
        return ", ".join(f"{key}={v!r}" for key, v in value.items()) or "-"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (columns: those of the first row, unless given).

    Examples
    --------
    >>> print(markdown_table([{"model": "pop", "hr@10": 0.12345, "events": 3}]))
    | model | hr@10 | events |
    |---|---|---|
    | pop | 0.1235 | 3 |
    """
    if not rows:
        return ""
    names = list(columns) if columns is not None else list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(name, "")) for name in names) + " |")
    return "\n".join(lines)


def _results_markdown(
    results: Sequence[EvalResult],
    tuning: Mapping[str, TuningRecord],
    seed: int | None,
    command: str | None,
    plot_name: str | None,
) -> str:
    parts = ["# Prequential evaluation", ""]
    if command:
        parts += ["Command:", "", "```", command, "```", ""]
    if seed is not None:
        parts += [f"Seed: {seed}", ""]
    test_rows = [row for result in results for row in result.rows() if row["split"] == "test"]
    parts += ["## Test split", "", markdown_table(test_rows), ""]
    notes = [f"- {result.model}: {result.note}" for result in results if result.note]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    if tuning:
        parts += ["## Tuning (tune split only)", ""]
        summary = [
            {
                "model": name,
                "metric": record.metric,
                "grid": ", ".join(f"{key}={list(values)}" for key, values in record.grid.items())
                or "-",
                "chosen": dict(record.chosen),
                "trials": len(record.trials),
            }
            for name, record in tuning.items()
        ]
        parts += [markdown_table(summary), ""]
        for name, record in tuning.items():
            if record.trials:
                parts += [f"### {name}", "", markdown_table(list(record.trials)), ""]
    if plot_name:
        parts += [f"![moving HR@k along the test stream]({plot_name})", ""]
    return "\n".join(parts)


def _plot_moving_hr(results: Sequence[EvalResult], path: Path, window: int) -> None:
    try:
        from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found,unused-ignore]
            FigureCanvasAgg,
        )
        from matplotlib.figure import Figure  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ImportError(
            "writing the moving HR plot needs matplotlib: `pip install matplotlib` "
            "(or call write_outputs(..., plot=False))"
        ) from exc
    # Figure + Agg canvas, not pyplot: no global backend or figure state is touched.
    figure = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    k = results[0].k if results else 10
    for result in results:
        hits = result.test_hits
        if not hits:
            continue
        # A sampled model has few scored events: a quarter of them per window keeps a curve.
        w = max(1, min(window, len(hits) // 4 or 1))
        curve = moving_average(hits, w)
        label = result.model if w == window else f"{result.model} (window {w})"
        axes.plot(result.test_positions[w - 1 :], curve, label=label, linewidth=1.2)
    axes.set_xlabel("event index in the stream (test split)")
    axes.set_ylabel(f"HR@{k}, moving average over {window} events")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_outputs(
    results: Sequence[EvalResult],
    out_dir: str | Path,
    *,
    tuning: Mapping[str, TuningRecord] | None = None,
    seed: int | None = None,
    command: str | None = None,
    window: int = _MOVING_WINDOW,
    plot: bool = True,
) -> list[Path]:
    """Write ``metrics.json``, ``results.md`` and (with ``plot``) ``hr_moving.png`` to ``out_dir``.

    ``metrics.json`` is the list of every result's :meth:`EvalResult.rows`; ``results.md`` the
    table of the test rows, the notes (sampled models), the command, seed, and per model the
    grid, the metric and the chosen values with every trial. Returns the written paths.

    Raises
    ------
    ImportError
        When ``plot`` is set and matplotlib is not installed (the other files are written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for result in results for row in result.rows()]
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot_path = out / "hr_moving.png"
    markdown_path = out / "results.md"
    markdown = _results_markdown(
        results, tuning or {}, seed, command, plot_path.name if plot else None
    )
    markdown_path.write_text(markdown, encoding="utf-8")
    written = [metrics_path, markdown_path]
    if plot:
        _plot_moving_hr(results, plot_path, window)
        written.append(plot_path)
    return written


# --------------------------------------------------------------------------------------------
# The diversity sweep: NDCG against intra-list diversity, one point per MMR lambda
# --------------------------------------------------------------------------------------------


def tradeoff_rows(points: Sequence[tuple[float, EvalResult]]) -> list[dict[str, Any]]:
    """One row per (lambda, model) of a sweep: the test split's accuracy and diversity.

    Examples
    --------
    >>> tradeoff_rows([])
    []
    """
    rows: list[dict[str, Any]] = []
    for lam, result in points:
        k = result.k
        m = result.metrics("test")
        rows.append(
            {
                "model": result.model,
                "lambda": lam,
                f"hr@{k}": m[f"hr@{k}"],
                f"ndcg@{k}": m[f"ndcg@{k}"],
                f"ild@{k}": m.get(f"ild@{k}", 0.0),
                f"genre_coverage@{k}": m.get(f"genre_coverage@{k}", 0.0),
                f"coverage@{k}": m[f"coverage@{k}"],
                "events_per_s": result.events_per_s("test"),
            }
        )
    return rows


def write_tradeoff(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    k: int = 10,
    command: str | None = None,
    plot: bool = True,
) -> list[Path]:
    """Write a sweep's ``diversity.md`` (the table) and ``diversity_tradeoff.png`` (NDCG@k
    against intra-list diversity, one line per model, one point per lambda)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "diversity.md"
    plot_path = out / "diversity_tradeoff.png"
    parts = ["# Diversity sweep (MMR lambda)", ""]
    if command:
        parts += ["Command:", "", "```", command, "```", ""]
    parts += [markdown_table(rows), ""]
    if plot:
        parts += [f"![NDCG@{k} against intra-list diversity]({plot_path.name})", ""]
    table_path.write_text("\n".join(parts), encoding="utf-8")
    written = [table_path]
    if plot:
        _plot_tradeoff(rows, plot_path, k)
        written.append(plot_path)
    return written


def _plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: Path, k: int) -> None:
    from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found,unused-ignore]
        FigureCanvasAgg,
    )
    from matplotlib.figure import Figure  # type: ignore[import-not-found,unused-ignore]

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for model in dict.fromkeys(str(row["model"]).split("+mmr")[0] for row in rows):
        mine = [r for r in rows if str(r["model"]).split("+mmr")[0] == model]
        xs = [float(r[f"ild@{k}"]) for r in mine]
        ys = [float(r[f"ndcg@{k}"]) for r in mine]
        axes.plot(xs, ys, marker="o", label=model)
        for r, x, y in zip(mine, xs, ys, strict=True):
            axes.annotate(f"λ={r['lambda']:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel(f"intra-list diversity@{k} (mean pairwise 1 - content cosine)")
    axes.set_ylabel(f"NDCG@{k} (test split)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
