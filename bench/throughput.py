"""Worker throughput against the bare kafka-python loop, on the same broker, in one run.

    .venv/bin/python bench/throughput.py                 # ml-100k and a 100k-item catalog
    .venv/bin/python bench/throughput.py --catalogs ml-100k --events 50000 --json out.json

For each catalog it writes the items and ``--events`` synthetic events (``--users`` users with
Zipf item popularity, consumer.datasets.synthetic_events) to a fresh ``--partitions``-partition
topic, then consumes all of them twice with fresh consumer groups: first the bare loop (poll,
msgpack-decode, produce one message per event, commit: the ceiling), then the full worker
(decode and validate, learn, rank, publish, commit) built exactly as ``freshrec worker`` builds
it. ``--compare`` runs the worker once more with some settings changed, in the same run. Each
clock starts at the first record and stops at the last commit, so group joins and the
catalog's encoding and load (reported on their own) are not counted. The catalog is encoded
once, before any loop runs; each worker starts from a fresh model on that encoder, with topics
of its own (the same items and events), so that no worker restores another's users. The broker
is started on port 29092 unless ``--bootstrap`` names one.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kafka_rig import Broker, bare_loop, log, markdown_table, produce_all, run_id


def catalog(name: str, seed: int) -> list[Any]:
    from consumer import datasets

    if name == "ml-100k":
        return datasets.load_ml100k_items(datasets.fetch_ml100k(progress=False))
    n = int(name.lower().rstrip("k")) * 1000 if name.lower().endswith("k") else int(name)
    return datasets.synthetic_catalog(n, seed=seed)


def worker_config(
    broker: Broker, prefix: str, args: argparse.Namespace, group: str, **overrides: Any
) -> Any:
    from consumer.config import WorkerConfig

    return WorkerConfig(
        **overrides,
        bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        group_id=group,
        partitions=args.partitions,
        batch_size=args.batch_size,
        poll_timeout_ms=200,
        device=args.device,
        create_topics=True,
        torch_threads=args.torch_threads,
    )


def encoded_catalog(
    broker: Broker, items: list[Any], args: argparse.Namespace
) -> tuple[Any, float]:
    """The worker's own recommender, built once, with every item text already encoded: each
    timed worker then starts from a fresh model on this encoder, and its catalog load from
    the items topic is only the upsert (the encoder has its own benchmark)."""
    from consumer.app import build_recommender

    base = build_recommender(worker_config(broker, "unused.", args, "unused"))
    torch.set_num_threads(os.cpu_count() or 1)  # encoding is not what is timed: use every core
    start = time.perf_counter()
    texts = [it.text for it in items]
    # The encoder's content-hash cache, kept on disk between runs (a 100k catalog takes ~10
    # minutes to encode on two cores); keyed by the encoder and every text, so any change
    # of either encodes afresh.
    digest = hashlib.sha256("\0".join([base.encoder.name, *texts]).encode()).hexdigest()[:16]
    saved = args.cache_dir / f"catalog-{len(texts)}-{digest}.pt" if args.cache_dir else None
    if saved is not None and saved.exists():
        base.encoder.load(saved)
        log(f"catalog embeddings loaded from {saved}")
    for at in range(0, len(texts), 10_000):
        base.encoder.encode(texts[at : at + 10_000])
        log(f"encoding the catalog: {min(at + 10_000, len(texts)):,}/{len(texts):,}")
    if saved is not None and not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        base.encoder.save(saved)
    seconds = time.perf_counter() - start
    torch.set_num_threads(args.torch_threads if args.torch_threads > 0 else os.cpu_count() or 1)
    log(f"catalog of {len(texts):,} items encoded in {seconds:.0f}s")
    return base, seconds


def run_worker(
    broker: Broker,
    prefix: str,
    n_events: int,
    args: argparse.Namespace,
    group: str,
    base: Any,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from consumer.app import build_worker
    from learner.recommender import Recommender

    config = worker_config(broker, prefix, args, group, **(overrides or {}))
    kw = build_worker(config, recommender=Recommender(base.encoder, base.config))
    thresholds = gc.get_threshold()
    try:
        start = time.perf_counter()
        kw.start()  # as `freshrec worker` does: catalog loaded, collector tuned
        load_s = time.perf_counter() - start
        log(
            f"worker: catalog of {len(kw.worker.recommender.items):,} items loaded in {load_s:.1f}s"
        )
        first = 0.0
        last_report = time.monotonic()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        deadline = time.monotonic() + args.timeout
        while kw.worker.totals.consumed < n_events and time.monotonic() < deadline:
            if kw.worker.step().consumed and not first:
                first = time.perf_counter()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                log(f"worker: {kw.worker.totals.consumed:,}/{n_events:,} events")
        elapsed = time.perf_counter() - first
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        totals = kw.worker.totals
        if totals.consumed < n_events:
            raise SystemExit(f"worker consumed only {totals.consumed} of {n_events} events")
        if totals.rejected:
            raise SystemExit(f"worker rejected {totals.rejected} events; the bench expects none")
        stages = {}
        batches = max(1, kw.worker.batches)
        for stage in ("decode", "learn", "rank", "publish", "state", "flush", "commit"):
            total = kw.worker.metrics.registry.get_sample_value(
                "freshrec_stage_seconds_sum", {"stage": stage}
            )
            stages[stage] = 1000.0 * (total or 0.0) / batches
        # Polling (fetching and parsing records), lag and item checks: the rest of the clock.
        stages["poll+other"] = max(0.0, 1000.0 * elapsed / batches - sum(stages.values()))
        # Collector pauses, wherever they fell (inside the stages above or between them).
        stages["gc pauses"] = 1000.0 * gc_seconds(kw.worker.metrics) / batches
        log(
            f"worker: {totals.consumed / batches:.1f} events per batch; ms per batch: "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        )
        return {
            "events": totals.consumed,
            "seconds": elapsed,
            "load_s": load_s,
            "published": totals.published,
            "stages": stages,
        }
    finally:
        # The next worker in this process starts from the same collector as this one.
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        kw.close()


def gc_seconds(metrics: Any) -> float:
    """Seconds of collector pauses the worker's metrics have seen, all generations."""
    return sum(
        metrics.registry.get_sample_value("freshrec_gc_pause_seconds_sum", {"generation": g}) or 0.0
        for g in "012"
    )


def fresh_topics(
    broker: Broker, items: list[Any], events: list[Any], args: argparse.Namespace
) -> str:
    """A new topic prefix with the catalog and the events written to it; returns the prefix.
    Every worker run gets its own: a worker on a prefix another has used would restore that
    one's users from the state changelog and skip their events as re-deliveries."""
    from consumer.codec import encode_event, encode_item

    prefix = f"bench-{run_id()}."
    broker.create_topics({f"{prefix}events": args.partitions, f"{prefix}bare.out": args.partitions})
    broker.create_topics({f"{prefix}items": 1}, {"cleanup.policy": "compact"})
    produce_all(
        broker,
        f"{prefix}items",
        [(it.item_id.encode(), encode_item(it)) for it in items],
        label="items",
    )
    rate = produce_all(
        broker,
        f"{prefix}events",
        [(ev.user_id.encode(), encode_event(ev)) for ev in events],
        label="events",
    )
    log(f"{prefix}: {len(items):,} items, {len(events):,} events written ({rate:,.0f} msg/s)")
    return prefix


def bench_catalog(broker: Broker, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from consumer.datasets import synthetic_events

    items = catalog(name, args.seed)
    events = synthetic_events(args.events, items, n_users=args.users, seed=args.seed)
    base, encode_s = encoded_catalog(broker, items, args)
    bare_rates, worker_rates, loads, compared_rates = [], [], [], []
    compared_stages: dict[str, float] = {}
    for rep in range(args.repeats):
        prefix = fresh_topics(broker, items, events, args)
        done, secs = bare_loop(
            broker,
            f"{prefix}events",
            f"{prefix}bare.out",
            len(events),
            group=f"{prefix}bare{rep}",
            batch_size=args.batch_size,
            timeout_s=args.timeout,
            stall_s=60.0,  # every event is on the topic already
            reopen=2,
        )
        if done < len(events):
            raise SystemExit(f"bare loop consumed only {done} of {len(events)} events")
        bare_rates.append(done / secs)
        log(f"{name}: bare loop {bare_rates[-1]:,.0f} events/s")
        w = run_worker(broker, prefix, len(events), args, f"{prefix}workers{rep}", base)
        worker_rates.append(w["events"] / w["seconds"])
        stages, published = w["stages"], w["published"]
        loads.append(w["load_s"])
        log(f"{name}: worker {worker_rates[-1]:,.0f} events/s")
        if args.compare:
            other = fresh_topics(broker, items, events, args)
            c = run_worker(broker, other, len(events), args, f"{other}workers", base, args.compare)
            compared_rates.append(c["events"] / c["seconds"])
            compared_stages = {k: round(v, 1) for k, v in c["stages"].items()}
            log(f"{name}: worker with {args.compare}: {compared_rates[-1]:,.0f} events/s")
    bare, worker = statistics.median(bare_rates), statistics.median(worker_rates)
    compared: dict[str, Any] = {}
    if compared_rates:
        compared = {
            "compared_settings": {k: str(v) for k, v in args.compare.items()},
            "compared_events_per_s": round(statistics.median(compared_rates), 1),
            "compared_ratio": round(statistics.median(compared_rates) / bare, 3),
            "compared_ms_per_batch": compared_stages,
        }
    return {
        "catalog": name,
        "catalog_items": len(items),
        "events": len(events),
        "bare_events_per_s": round(bare, 1),
        "worker_events_per_s": round(worker, 1),
        "ratio": round(worker / bare, 3),
        "catalog_encode_s": round(encode_s, 1),
        "catalog_load_s": round(statistics.median(loads), 1),
        "worker_ms_per_batch": {k: round(v, 1) for k, v in stages.items()},
        "lists_per_event": round(published / len(events), 3),
        "repeats": args.repeats,
        **compared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start one on 29092)")
    parser.add_argument(
        "--catalogs",
        default="ml-100k,100k",
        help="comma-separated: ml-100k or a synthetic size like 100k (default: %(default)s)",
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="events per catalog (default: %(default)s)"
    )
    parser.add_argument(
        "--users", type=int, default=20_000, help="distinct users (default: %(default)s)"
    )
    parser.add_argument(
        "--partitions", type=int, default=8, help="events topic partitions (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="records per poll, both loops (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each loop; medians reported (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="cpu", help="the worker's torch device (default: %(default)s)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="the worker's torch threads, 0: one per core as the worker (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="give up a loop after this many seconds"
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--cache-dir",
        type=lambda v: Path(v) if v else None,
        default=Path.home() / ".cache" / "freshrec" / "bench",
        help="keep catalog embeddings here between runs; '' to encode every time "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the worker loop, top 40 to stderr"
    )
    parser.add_argument(
        "--compare",
        metavar="SETTING=VALUE[,SETTING=VALUE]",
        default="",
        help="after each worker run, run the worker again with these settings changed (names "
        "of `freshrec worker` settings with underscores, e.g. gc_young_threshold=0), in the "
        "same run; reported as 'compared'",
    )
    args = parser.parse_args(argv)
    args.compare = compare_settings(args.compare)

    broker = Broker.ensure(args.bootstrap)
    rows = []
    try:
        for name in args.catalogs.split(","):
            rows.append(bench_catalog(broker, name.strip(), args))
    finally:
        broker.stop()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def compare_settings(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` as worker settings, each value read as its ``FRESHREC_*`` variable would
    be (the same conversion and checks as ``freshrec worker``).

    >>> compare_settings("gc_young_threshold=0,gc_freeze=false")
    {'gc_young_threshold': 0, 'gc_freeze': False}
    """
    from dataclasses import fields

    from consumer.config import WorkerConfig, config_from_args, env_name
    from consumer.exceptions import ConfigError

    given = dict(pair.partition("=")[::2] for pair in filter(None, text.split(",")))
    unknown = set(given) - {f.name for f in fields(WorkerConfig)}
    if unknown:
        raise SystemExit(f"--compare: not worker settings: {', '.join(sorted(unknown))}")
    try:
        config = config_from_args(argparse.Namespace(), {env_name(k): v for k, v in given.items()})
    except ConfigError as err:
        raise SystemExit(f"--compare: {err}") from err
    return {name: getattr(config, name) for name in given}


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = [
        "catalog items",
        "events",
        "bare loop events/s",
        "worker events/s",
        "worker / bare",
        "catalog load s",
        "worker ms per batch",
    ]
    compared = all("compared_events_per_s" in r for r in rows)
    if compared:
        headers += [f"compared ({rows[0]['compared_settings']}) events/s", "compared / bare"]
    print(
        markdown_table(
            headers,
            [
                [
                    f"{r['catalog_items']:,} ({r['catalog']})",
                    f"{r['events']:,}",
                    f"{r['bare_events_per_s']:,.0f}",
                    f"{r['worker_events_per_s']:,.0f}",
                    f"{r['ratio']:.2f}",
                    r["catalog_load_s"],
                    ", ".join(f"{k} {v}" for k, v in r["worker_ms_per_batch"].items()),
                ]
                + (
                    [f"{r['compared_events_per_s']:,.0f}", f"{r['compared_ratio']:.2f}"]
                    if compared
                    else []
                )
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
