"""``freshrec evaluate``: tune every model on the first 20% of a stream, score it on the rest.

The dataset is replayed in timestamp order, in-process, through the same learner code as the
worker (no Kafka), test-then-train; see ``learner.evaluate`` for the protocol and metrics.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from learner.encoder import CachedEncoder, TextEncoder
from learner.evaluate import (
    EvalResult,
    ItemFeatures,
    TuningRecord,
    evaluate_stream,
    markdown_table,
    seeded_sample,
    tradeoff_rows,
    tune,
    write_outputs,
    write_tradeoff,
)
from learner.rules import value_keys
from learner.types import Item
from learner.zoo import MODEL_NAMES, model_specs

# The item attribute that counts as a genre for genre coverage, per dataset.
GENRE_ATTRIBUTE = {"ml-100k": "genres", "synthetic": "category"}

__all__ = ["run_evaluation"]

log = logging.getLogger(__name__)


def run_evaluation(
    *,
    dataset: str,
    models: Sequence[str],
    k: int,
    device: str,
    out: Path,
    events_limit: int = 0,
    seed: int = 0,
    tune_models: bool = True,
    progress: bool = True,
    torch_threads: int = 1,
    diversity: Sequence[float] = (0.0,),
    encoder_dir: str | None = None,
) -> list[EvalResult]:
    """Tune (unless told not to), evaluate and write ``metrics.json``, ``results.md``, the plot.

    Each freshrec model is evaluated once per MMR lambda in ``diversity`` (named
    ``freshrec+mmr0.2`` for lambda 0.2), with the hyper-parameters tuned at lambda 0; with more
    than one lambda the sweep's table and trade-off plot go to ``diversity.md`` and
    ``diversity_tradeoff.png``. Every list is measured for intra-list diversity and genre
    coverage. ``encoder_dir`` replaces the default encoder; one written by ``freshrec
    finetune`` must have been trained within the tuning part of this very stream (else
    :class:`EncoderError`).
    """
    from consumer.finetuning import check_no_leak, read_metadata
    from consumer.replay import load_dataset, load_profiles

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    lambdas = list(dict.fromkeys(float(x) for x in diversity)) or [0.0]
    if any(not 0.0 <= x <= 1.0 for x in lambdas):
        raise ValueError(f"every diversity lambda must lie in [0, 1], got {lambdas}")
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    items, events = load_dataset(dataset)
    profiles = load_profiles(dataset)
    if events_limit:
        events = events[:events_limit]
    if encoder_dir:
        check_no_leak(read_metadata(encoder_dir), dataset=dataset, n_events=len(events))
    encoder = CachedEncoder(TextEncoder(encoder_dir or None, device=device))
    log.info("encoding %d item texts once with %s", len(items), encoder.name)
    vectors = encoder.encode([it.text for it in items])  # warm the cache for every model
    features = item_features(items, vectors, GENRE_ATTRIBUTE.get(dataset, "genres"))
    specs = model_specs(encoder, seed=seed)
    sweep: list[tuple[float, EvalResult]] = []
    results: list[EvalResult] = []
    tuning: dict[str, TuningRecord] = {}
    for name in models:
        spec = specs[name]
        params: dict[str, object] = {}
        if tune_models and spec.grid:
            t0 = time.perf_counter()
            params, trials = tune(
                spec.factory,
                spec.grid,
                events,
                k=k,
                catalog_size=len(items),
                rank_sample_size=spec.rank_sample,
                seed=seed,
                items=items,
                progress=progress,
                profiles=profiles,
            )
            tuning[name] = TuningRecord(spec.grid, params, f"ndcg@{k}", tuple(trials))
            log.info("%s: chose %s in %.0fs", name, params, time.perf_counter() - t0)
        elif spec.grid:
            params = {key: values[0] for key, values in spec.grid.items()}
        sample = seeded_sample(len(events), spec.rank_sample, seed) if spec.rank_sample else None
        for lam in lambdas if name.startswith("freshrec") else [0.0]:
            factory = model_specs(encoder, seed=seed, diversity=lam)[name].factory
            model = factory(params)
            if lam:
                model.name = f"{name}+mmr{lam:g}"
            result = evaluate_stream(
                model,
                events,
                k=k,
                catalog_size=len(items),
                rank_sample=sample,
                items=items,
                progress=progress,
                profiles=profiles,
                features=features,
            )
            results.append(result)
            if name.startswith("freshrec"):
                sweep.append((lam, result))
            test = result.metrics("test")
            log.info(
                "%s: test HR@%d %.4f NDCG@%d %.4f ILD@%d %.4f",
                result.model,
                k,
                test[f"hr@{k}"],
                k,
                test[f"ndcg@{k}"],
                k,
                test[f"ild@{k}"],
            )
    command = "freshrec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_outputs(results, out, tuning=tuning, seed=seed, command=command)
    if len(lambdas) > 1 and sweep:
        rows = tradeoff_rows(sweep)
        write_tradeoff(rows, out, k=k, command=command)
        print(markdown_table(rows))
        print(f"\nwrote {out}/diversity.md and {out}/diversity_tradeoff.png")
    rows = [
        r for res in results for r in res.rows() if r["split"] == "test" and r["slice"] == "all"
    ]
    print(markdown_table(rows))
    print(f"\nwrote {out}/metrics.json, {out}/results.md and {out}/hr_moving.png")
    return results


def item_features(items: Sequence[Item], vectors: torch.Tensor, attribute: str) -> ItemFeatures:
    """The catalog's content vectors and each item's genres (the values of ``attribute``)."""
    genres = [
        value_keys(it.attributes[attribute]) if attribute in it.attributes else [] for it in items
    ]
    return ItemFeatures.build([it.item_id for it in items], vectors, genres)
