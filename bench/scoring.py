"""Scoring throughput: ``recommend()`` exact against FAISS candidates, over synthetic catalogs.

For each catalog size one ``Recommender`` is built over a synthetic item table (no text encoder:
clustered unit vectors, see ``clustered_vectors``), each user gets a folded-in history (so users
have real vectors, co-occurrence neighbours and consumed items), and the head gets
trained-looking parameters (random ``δ``, biases that follow popularity, ``W = I + U Vᵀ`` with
small ``U``, ``V``). Then ``recommend(batch, k, explain=False)`` is timed over all users, exact
(``ann_min_items=0``) and through the ANN index (forced on at every size) alternately in the same
process; the table shows the median users/s of the repeats, recall@10 of the ANN lists against
the exact ones, and how long the index took to build and to refresh after a head step.

    PYTHONPATH=. python bench/scoring.py --sizes 10000,100000,1000000 --json scoring.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from learner.ann import AnnConfig, default_nlist
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, UserRecommendation

DIM = 384  # all-MiniLM-L6-v2's width
T0_MS = 1_700_000_000_000


class NoEncoder:
    """Stands in for the text encoder: the bench writes item vectors into the table itself."""

    name = "synthetic"
    dim = DIM

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def encode(self, texts: Sequence[str]) -> Tensor:
        raise RuntimeError("the scoring bench never encodes text")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def clustered_vectors(
    n: int, dim: int, topics: int, g: torch.Generator, chunk: int = 131_072
) -> tuple[Tensor, Tensor]:
    """``n`` unit vectors with the structure of sentence embeddings: a direction every item
    shares (so unrelated items still have cosine ~0.1), ``topics`` topics of 8 sub-topics each,
    and per-item noise (items of one sub-topic have cosine ~0.6). Returns (vectors, topic).
    """
    unit = torch.nn.functional.normalize
    common = unit(torch.randn(dim, generator=g), dim=0)
    centres = unit(torch.randn(topics, dim, generator=g), dim=-1)
    subs = unit(
        centres.repeat_interleave(8, 0)
        + 0.6 * torch.randn(topics * 8, dim, generator=g) / dim**0.5,
        dim=-1,
    )
    sub = torch.randint(0, topics * 8, (n,), generator=g)
    out = torch.empty((n, dim))
    for a in range(0, n, chunk):
        s = sub[a : a + chunk]
        noise = torch.randn(s.numel(), dim, generator=g) * (0.9 / dim**0.5)
        out[a : a + chunk] = unit(0.5 * common + subs[s] + noise, dim=-1)
    return out, sub // 8


def history_events(
    topic: Tensor, users: int, g: torch.Generator, min_len: int, max_len: int
) -> list[Event]:
    """Each user likes one to three topics and clicks items of them, popular ones more often
    (Zipf within a topic); events interleave across users in time order."""
    n_topics = int(topic.max()) + 1
    order = torch.argsort(topic, stable=True)
    bounds = torch.searchsorted(topic[order], torch.arange(n_topics + 1))
    picks: list[tuple[int, int]] = []
    for u in range(users):
        tastes = torch.randint(
            0, n_topics, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g
        )
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        for j in range(length):
            t = int(tastes[j % tastes.numel()])
            a, b = int(bounds[t]), int(bounds[t + 1])
            if a == b:
                continue
            ranks = torch.arange(1, b - a + 1, dtype=torch.float32)
            r = int(torch.multinomial(1.0 / ranks, 1, generator=g))
            picks.append((u, int(order[a + r])))
    shuffle = torch.randperm(len(picks), generator=g).tolist()
    return [
        Event(f"e{i}", f"u{picks[p][0]}", f"i{picks[p][1]}", "click", None, T0_MS + i * 1000)
        for i, p in enumerate(shuffle)
    ]


def build(n: int, args: argparse.Namespace) -> tuple[Recommender, list[str]]:
    g = torch.Generator().manual_seed(args.seed)
    log(f"[{n:,} items] generating clustered vectors")
    vectors, topic = clustered_vectors(n, DIM, max(50, n // 500), g)
    config = ModelConfig(train=False, cooc_neighbours=args.cooc_neighbours, ann_min_items=0)
    rec = Recommender(NoEncoder(args.device), config)
    rec.items.upsert([f"i{i}" for i in range(n)], vectors)
    del vectors
    rec.head.ensure_capacity(rec.items.capacity)
    events = history_events(topic, args.users, g, args.min_history, args.max_history)
    log(f"[{n:,} items] folding {len(events):,} events of {args.users} users")
    for a in range(0, len(events), 500):
        rec.learn(events[a : a + 500])
    # Trained-looking head parameters (training itself is not what this bench measures).
    head, dev = rec.head, rec.device
    head.delta[:n] = (torch.randn(n, DIM, generator=g) * (0.1 / DIM**0.5)).to(dev)
    popularity = torch.log1p(rec.trending.scores(n).cpu())
    head.bias[:n] = (0.05 * torch.randn(n, generator=g) + 0.1 * popularity).to(dev)
    with torch.no_grad():
        head.U.copy_(torch.randn(head.U.shape, generator=g) * 0.05)
        head.V.copy_(torch.randn(head.V.shape, generator=g) * 0.05)
    head.steps += 1
    return rec, [f"u{u}" for u in range(args.users)]


def run(rec: Recommender, users: list[str], args: argparse.Namespace) -> list[UserRecommendation]:
    out: list[UserRecommendation] = []
    for a in range(0, len(users), args.batch):
        out.extend(rec.recommend(users[a : a + args.batch], args.k, explain=False))
    return out


def recall(approx: list[UserRecommendation], exact: list[UserRecommendation]) -> float:
    hits = total = 0
    for a, e in zip(approx, exact, strict=True):
        truth = {it.item_id for it in e.items}
        hits += len(truth & {it.item_id for it in a.items})
        total += len(truth)
    return hits / max(1, total)


def measure(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rec, users = build(n, args)
    ann = AnnConfig(
        nlist=args.nlist, nprobe=args.nprobe, candidates=args.candidates, seed=args.seed
    )
    modes = {"exact": dataclasses.replace(rec.config, ann_min_items=0)}
    if args.ann:
        modes["faiss-ivf"] = dataclasses.replace(rec.config, ann_min_items=1, ann=ann)
    rec.config = modes["exact"]
    rec.recommend(users[:1], args.k, explain=False)  # warm-up: e + δ, signals' buffers
    build_s = refresh_s = 0.0
    if args.ann:
        rec.config = modes["faiss-ivf"]
        log(f"[{n:,} items] building the index")
        t0 = time.perf_counter()
        rec.recommend(users[:1], args.k, explain=False)
        build_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {m: [] for m in modes}
    lists: dict[str, list[UserRecommendation]] = {}
    for r in range(args.repeats):
        for mode in list(modes) if r % 2 == 0 else list(reversed(modes)):
            rec.config = modes[mode]
            t0 = time.perf_counter()
            lists[mode] = run(rec, users, args)
            times[mode].append(time.perf_counter() - t0)
            log(f"[{n:,} items] repeat {r + 1}/{args.repeats} {mode}: {times[mode][-1]:.2f} s")
    index = None
    if args.ann:
        # One worker step's worth of head changes (a 512-event batch moves δ and b of its
        # positives and negatives), then the time the next call spends updating the index.
        g = torch.Generator().manual_seed(args.seed + 1)
        touched = torch.randint(0, n, (512 * 9,), generator=g).to(rec.device)
        rec.head.delta[touched] += 1e-3
        rec.head.bias[touched] += 1e-3
        rec.head.steps += 1
        t0 = time.perf_counter()
        rec._ann_index()  # the refresh alone (the bench's one look inside the recommender)
        refresh_s = time.perf_counter() - t0
        index = rec._ann.index if rec._ann is not None else None

    exact_s = statistics.median(times["exact"])
    common = {"device": args.device_label, "catalog_items": n, "users": len(users)}
    common |= {"batch": args.batch, "k": args.k, "vectors": "clustered", "threads": args.threads}
    exact_row = common | {
        "method": "exact",
        "users_per_s": len(users) / exact_s,
        "recall_at_10": 1.0,
        "seconds": exact_s,
    }
    if not args.ann:
        return [exact_row]
    return [
        common
        | {
            "method": "exact",
            "users_per_s": len(users) / exact_s,
            "recall_at_10": 1.0,
            "seconds": exact_s,
        },
        common
        | {
            "method": "faiss-ivf",
            "users_per_s": len(users) / statistics.median(times["faiss-ivf"]),
            "recall_at_10": recall(lists["faiss-ivf"], lists["exact"]),
            "seconds": statistics.median(times["faiss-ivf"]),
            "speedup": exact_s / statistics.median(times["faiss-ivf"]),
            "build_s": build_s,
            "refresh_s": refresh_s,
            "nlist": index.nlist if index is not None else default_nlist(n),
            "nprobe": args.nprobe,
            "candidates": args.candidates,
        },
    ]


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'items':>10} {'method':<10} {'users/s':>9} {'x exact':>8} {'recall@10':>9} "
    head += f"{'build s':>8} {'refresh s':>9}  params"
    lines = [head, "-" * len(head)]
    for r in rows:
        ann = r["method"] != "exact"
        lines.append(
            f"{r['catalog_items']:>10,} {r['method']:<10} {r['users_per_s']:>9.1f} "
            f"{r.get('speedup', 1.0):>8.1f} {r['recall_at_10']:>9.3f} "
            + (
                f"{r['build_s']:>8.1f} {r['refresh_s']:>9.3f}  "
                f"nlist={r['nlist']} nprobe={r['nprobe']} candidates={r['candidates']}"
                if ann
                else f"{'':>8} {'':>9}"
            )
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="catalog sizes, comma-separated"
    )
    parser.add_argument("--users", type=int, default=1024, help="users ranked per repeat")
    parser.add_argument("--batch", type=int, default=1024, help="users per recommend() call")
    parser.add_argument("--k", type=int, default=10, help="list length")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median)")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the model (FAISS runs on CPU)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: ~sqrt(items))")
    parser.add_argument(
        "--nprobe", type=int, default=AnnConfig.nprobe, help="IVF lists scanned per user"
    )
    parser.add_argument(
        "--candidates", type=int, default=AnnConfig.candidates, help="extra candidates per user"
    )
    parser.add_argument("--min-history", type=int, default=5, help="fewest events per user")
    parser.add_argument("--max-history", type=int, default=40, help="most events per user")
    parser.add_argument(
        "--cooc-neighbours",
        type=int,
        default=128,
        help="co-occurrence neighbours per item (the model's default, 1024, is 12 GB at 1M items)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        args.ann = True
    except ImportError:  # the GPU machine: exact scoring only
        log("faiss is not installed: timing exact scoring only")
        args.ann = False
    cpu = platform.processor() or platform.machine()
    args.device_label = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else f"cpu ({cpu}, {args.threads} threads)"
    )
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.extend(measure(n, args))
        log(table(rows[-2:]))
    print(
        f"recommend() over clustered synthetic vectors (dim {DIM}), {args.users} users "
        f"in calls of {args.batch}, k={args.k}, median of {args.repeats}; {args.device_label}"
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
