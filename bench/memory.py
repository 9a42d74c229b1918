"""Memory of user state: process RSS with 1M users, bytes per user, and RSS while users churn.

    .venv/bin/python bench/memory.py                     # 1M users, 3 events each, 3 churn rounds
    .venv/bin/python bench/memory.py --users 100000 --json mem.json

Users are folded into the worker's own ``UserStateStore`` (the state a worker keeps per user:
decayed vector, newest time, event count, history ring, consumed items, the head of the
last ranked list that hard negatives come from) in batches of
``--batch`` events, with the default settings of ``freshrec worker`` (384-dim MiniLM vectors,
``history_len`` 50). RSS is read from /proc/self/status. Bytes per user are reported two ways:
the RSS growth divided by users, and the store's own accounting; the embedding (``dim`` float32
per user) is reported on its own, as the issue asks, and the rest is "beyond the embedding".

Churn: after every user exists, ``--churn-rounds`` rounds each send ``--events-per-user``
more events to every user, so histories wrap and consumed items spill; RSS should stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.kafka_rig import log, markdown_table
from learner.user_state import UserStateStore

STORE_PARTS = ("vectors", "times_counts", "history_rings", "ranked_pools", "spilled")


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/status, after handing freed heap
    back to the OS (so that buffers freed by array growth do not count as live state)."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: RSS may then include freed heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fold_round(
    store: UserStateStore,
    user_ids: list[str],
    items: torch.Tensor,
    *,
    n_items: int,
    events_per_user: int,
    batch: int,
    ts0: int,
    rng: torch.Generator,
) -> None:
    """Every user gets ``events_per_user`` events, in batches of ``batch`` events."""
    n = len(user_ids)
    total = n * events_per_user
    for start in range(0, total, batch):
        idx = torch.arange(start, min(start + batch, total)) % n
        users = [user_ids[i] for i in idx.tolist()]
        item_rows = torch.randint(0, n_items, (len(users),), generator=rng)
        store.fold(
            store.rows_for(users),
            item_rows,
            items[item_rows],
            torch.ones(len(users)),
            torch.full((len(users),), ts0) + idx,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--users", type=int, default=1_000_000, help="users in state (default: %(default)s)"
    )
    parser.add_argument(
        "--events-per-user",
        type=int,
        default=3,
        help="events per user per round (default: %(default)s)",
    )
    parser.add_argument(
        "--churn-rounds",
        type=int,
        default=3,
        help="rounds after all users exist (default: %(default)s)",
    )
    parser.add_argument(
        "--items",
        type=int,
        default=100_000,
        help="catalog rows events draw from (default: %(default)s)",
    )
    parser.add_argument(
        "--dim", type=int, default=384, help="embedding size (default: %(default)s, MiniLM)"
    )
    parser.add_argument(
        "--history-len", type=int, default=50, help="history ring per user (default: %(default)s)"
    )
    parser.add_argument(
        "--pool-len",
        type=int,
        default=20,
        help="ranked list head kept per user for hard negatives (default: %(default)s, the "
        "worker's hard_negative_pool)",
    )
    parser.add_argument(
        "--batch", type=int, default=20_000, help="events per fold (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rng = torch.Generator().manual_seed(0)
    # The item vectors are shared by every user; they are made before the baseline RSS.
    items = torch.nn.functional.normalize(torch.randn(args.items, args.dim, generator=rng), dim=-1)
    store = UserStateStore(
        args.dim,
        half_life_s=14 * 86_400.0,
        history_len=args.history_len,
        pool_len=args.pool_len,
    )
    user_ids = [f"user-{i:08d}" for i in range(args.users)]
    gc.collect()
    base = rss_bytes()
    log(f"baseline RSS {base / 2**20:,.0f} MiB; folding {args.users:,} users")
    start = time.perf_counter()
    fold_round(
        store,
        user_ids,
        items,
        n_items=args.items,
        events_per_user=args.events_per_user,
        batch=args.batch,
        ts0=1_700_000_000_000,
        rng=rng,
    )
    gc.collect()
    filled = rss_bytes()
    log(
        f"{args.users:,} users in {time.perf_counter() - start:.0f}s; RSS {filled / 2**20:,.0f} MiB"
    )
    accounting = store.state_bytes()
    embedding = args.dim * store.vectors.element_size()
    per_user = (filled - base) / args.users
    rows: list[dict[str, Any]] = [
        {
            "users": args.users,
            "rss_bytes": filled,
            "bytes_per_user": round(per_user, 1),
            "embedding_bytes_per_user": embedding,
            "beyond_embedding_bytes_per_user": round(per_user - embedding, 1),
            "store_bytes_per_user": round(
                (
                    accounting["vectors"]
                    + accounting["times_counts"]
                    + accounting["history_rings"]
                    + accounting["ranked_pools"]
                    + accounting["spilled"]
                )
                / args.users,
                1,
            ),
            "phase": "filled",
            "events_per_user": args.events_per_user,
        }
    ]
    for round_no in range(1, args.churn_rounds + 1):
        fold_round(
            store,
            user_ids,
            items,
            n_items=args.items,
            events_per_user=args.events_per_user * 10,
            batch=args.batch,
            ts0=1_700_000_000_000 + round_no * 10**9,
            rng=rng,
        )
        gc.collect()
        rss = rss_bytes()
        log(f"churn round {round_no}: RSS {rss / 2**20:,.0f} MiB")
        rows.append(
            {
                "users": args.users,
                "rss_bytes": rss,
                "bytes_per_user": round((rss - base) / args.users, 1),
                "embedding_bytes_per_user": embedding,
                "beyond_embedding_bytes_per_user": round((rss - base) / args.users - embedding, 1),
                "phase": f"churn {round_no}",
                "events_per_user": args.events_per_user + round_no * args.events_per_user * 10,
            }
        )
    print_table(rows, base)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def print_table(rows: list[dict[str, Any]], base: int) -> None:
    print(f"baseline RSS (model-free process, item vectors loaded): {base / 2**20:,.0f} MiB")
    headers = [
        "phase",
        "users",
        "events/user so far",
        "RSS MiB",
        "bytes/user",
        "embedding bytes/user",
        "beyond embedding bytes/user",
    ]
    print(
        markdown_table(
            headers,
            [
                [
                    r["phase"],
                    f"{r['users']:,}",
                    r["events_per_user"],
                    f"{r['rss_bytes'] / 2**20:,.0f}",
                    f"{r['bytes_per_user']:,.0f}",
                    r["embedding_bytes_per_user"],
                    f"{r['beyond_embedding_bytes_per_user']:,.0f}",
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
