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
    TuningRecord,
    evaluate_stream,
    markdown_table,
    seeded_sample,
    tune,
    write_outputs,
)
from learner.zoo import MODEL_NAMES, model_specs

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
    encoder_dir: str | None = None,
) -> list[EvalResult]:
    """Tune (unless told not to), evaluate and write ``metrics.json``, ``results.md``, the plot.

    ``encoder_dir`` replaces the default encoder; one written by ``freshrec finetune`` must have
    been trained within the tuning part of this very stream (else :class:`EncoderError`).
    """
    from consumer.finetuning import check_no_leak, read_metadata
    from consumer.replay import load_dataset

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    items, events = load_dataset(dataset)
    if events_limit:
        events = events[:events_limit]
    if encoder_dir:
        check_no_leak(read_metadata(encoder_dir), dataset=dataset, n_events=len(events))
    encoder = CachedEncoder(TextEncoder(encoder_dir or None, device=device))
    log.info("encoding %d item texts once with %s", len(items), encoder.name)
    encoder.encode([it.text for it in items])  # warm the cache: every model reuses it
    specs = model_specs(encoder, seed=seed)
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
            )
            tuning[name] = TuningRecord(spec.grid, params, f"ndcg@{k}", tuple(trials))
            log.info("%s: chose %s in %.0fs", name, params, time.perf_counter() - t0)
        elif spec.grid:
            params = {key: values[0] for key, values in spec.grid.items()}
        sample = seeded_sample(len(events), spec.rank_sample, seed) if spec.rank_sample else None
        result = evaluate_stream(
            spec.factory(params),
            events,
            k=k,
            catalog_size=len(items),
            rank_sample=sample,
            items=items,
            progress=progress,
        )
        results.append(result)
        test = result.metrics("test")
        log.info("%s: test HR@%d %.4f NDCG@%d %.4f", name, k, test[f"hr@{k}"], k, test[f"ndcg@{k}"])
    command = "freshrec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_outputs(results, out, tuning=tuning, seed=seed, command=command)
    rows = [
        r for res in results for r in res.rows() if r["split"] == "test" and r["slice"] == "all"
    ]
    print(markdown_table(rows))
    print(f"\nwrote {out}/metrics.json, {out}/results.md and {out}/hr_moving.png")
    return results
