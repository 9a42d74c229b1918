"""Rank-stage cost of MMR diversity: ``recommend()`` at lambda 0 against lambda > 0 on ml-100k.

One ``Recommender`` (the worker's defaults, the real encoder unless ``--random-vectors``) learns
the first ``--warm`` ml-100k events in micro-batches of ``--batch`` events, as the worker does.
Then, for each of the next ``--batches`` micro-batches, the distinct users of that batch are
ranked once per lambda (``recommend(users, k)`` with ``because``, which is the worker's rank
stage), alternating the lambdas ``--repeats`` times in the same process. The table shows the
median milliseconds per batch, users per batch and each lambda's cost relative to lambda 0.

    PYTHONPATH=. python bench/rerank.py --lambdas 0,0.3 --json rerank.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch

from learner.recommender import ModelConfig, Recommender


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", default="0,0.3", help="comma-separated MMR lambdas")
    parser.add_argument("--pool", type=int, default=500, help="rerank_pool (candidates)")
    parser.add_argument("--warm", type=int, default=20_000, help="events learned first")
    parser.add_argument("--batch", type=int, default=500, help="events per micro-batch")
    parser.add_argument("--batches", type=int, default=10, help="micro-batches timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--random-vectors", action="store_true", help="no text encoder")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lambdas = [float(x) for x in args.lambdas.split(",")]

    from consumer.replay import load_dataset

    items, events = load_dataset("ml-100k")
    if args.random_vectors:
        from learner.zoo import RandomEncoder

        encoder: Any = RandomEncoder(384)
    else:
        from learner.encoder import TextEncoder

        encoder = TextEncoder(device="cpu")
    rec = Recommender(encoder, ModelConfig(rerank_pool=args.pool))
    t0 = time.perf_counter()
    rec.upsert_items(items)
    print(
        f"catalog: {len(items)} items encoded in {time.perf_counter() - t0:.1f}s", file=sys.stderr
    )
    for a in range(0, args.warm, args.batch):
        rec.learn(events[a : a + args.batch])
    batches = [
        list(dict.fromkeys(ev.user_id for ev in events[a : a + args.batch]))
        for a in range(args.warm, args.warm + args.batches * args.batch, args.batch)
    ]
    base = rec.config
    seconds: dict[float, list[float]] = {lam: [] for lam in lambdas}
    for _ in range(args.repeats):
        for lam in lambdas:
            rec.config = dataclasses.replace(base, diversity=lam)
            start = time.perf_counter()
            for users in batches:
                rec.recommend(users, args.k)
            seconds[lam].append((time.perf_counter() - start) / len(batches))
    rec.config = base
    users = statistics.mean(len(u) for u in batches)
    ref = statistics.median(seconds[lambdas[0]])
    rows = [
        {
            "lambda": lam,
            "ms_per_batch": 1000 * statistics.median(s),
            "users_per_batch": users,
            "relative": statistics.median(s) / ref,
        }
        for lam, s in seconds.items()
    ]
    head = f"ms per batch (median of {args.repeats})"
    print(f"| lambda | {head} | users per batch | vs lambda {lambdas[0]:g} |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['lambda']:g} | {r['ms_per_batch']:.1f} | {r['users_per_batch']:.0f} | "
            f"{r['relative']:.2f}x |"
        )
    if args.json:
        meta = {
            "machine": platform.platform(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
            "args": vars(args),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
