"""Freshness latency: from an event's produce time to its user's list arriving downstream.

    .venv/bin/python bench/latency.py                     # 500 and 2000 events/s, 30 s each
    .venv/bin/python bench/latency.py --rates 500 --seconds 20 --json lat.json

For each offered rate, and for each of the two loops (the bare kafka-python loop of
bench/kafka_rig.py, and ``freshrec worker`` with the ml-100k catalog), the loop runs as its own
process against the local broker, a producer thread offers events at a fixed rate (each
event's ``ts`` is its send time in ms), and a consumer of the output topic timestamps every
message as it arrives. An event counts as delivered when a message for its user arrives whose
``event_ts`` (worker) or ``ts`` (bare loop) is at least the event's own: latency is arrival
time minus send time, on the same clock. p50/p95/p99 are over every delivered event; events
never delivered within ``--drain`` seconds after the last send are reported as lost.

With ``--rounds N`` each loop is measured N times per rate and every figure is the median;
with ``--compare-env`` the two workers take turns going first, so that run order (the second
of two worker runs was often slower on the shared VM) does not decide a comparison::

    .venv/bin/python bench/latency.py --rates 500 --rounds 3 \
        --compare-env FRESHREC_GC_BUSY_YOUNG_THRESHOLD=0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict, deque
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack

from bench.kafka_rig import ROOT, Broker, log, markdown_table, produce_all, run_id

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(
    broker: Broker, prefix: str, batch_size: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        PY,
        "-m",
        "consumer.cli",
        "worker",
        "--bootstrap-servers",
        broker.bootstrap,
        "--topic-prefix",
        prefix,
        "--group-id",
        f"{prefix}workers",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(port),
        "--batch-size",
        str(batch_size),
        "--device",
        "cpu",
    ]
    return _spawn(cmd, env), f"http://127.0.0.1:{port}/readyz"


def start_bare(broker: Broker, prefix: str, batch_size: int) -> subprocess.Popen[bytes]:
    cmd = [
        PY,
        str(ROOT / "bench/kafka_rig.py"),
        "bare",
        "--bootstrap",
        broker.bootstrap,
        "--in",
        f"{prefix}events",
        "--out",
        f"{prefix}bare.out",
        "--group",
        f"{prefix}bare",
        "--batch-size",
        str(batch_size),
    ]
    return _spawn(cmd)


# Each child's log goes to a file of its own: a pipe nobody reads while the run goes on fills up
# (64 KiB) and then blocks the child at its next log line, which looks like a stalled worker.
# With --logs DIR they are kept there, numbered in start order (01-bare.log, 02-worker.log, ...).
_LOGS: dict[int, IO[bytes]] = {}
LOG_DIR: Path | None = None


def _spawn(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    if LOG_DIR is None:
        log_file = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the child's whole life
    else:
        kind = "worker" if "consumer.cli" in cmd else "bare"
        log_file = (LOG_DIR / f"{len(_LOGS) + 1:02d}-{kind}.log").open("w+b")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        env={**os.environ, **(env or {})},
    )
    _LOGS[proc.pid] = log_file
    return proc


def _log_tail(proc: subprocess.Popen[bytes], chars: int = 2000) -> str:
    log_file = _LOGS.get(proc.pid)
    if log_file is None:
        return ""
    log_file.seek(0)
    return log_file.read().decode(errors="replace")[-chars:]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}:\n{_log_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"worker not ready after {timeout_s:.0f}s")


class Delivery:
    """Matches output messages to the events they answer, per user, in send order."""

    def __init__(self) -> None:
        self.pending: dict[str, deque[int]] = defaultdict(deque)
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()

    def sent(self, user: str, ts_ms: int) -> None:
        with self.lock:
            self.pending[user].append(ts_ms)

    def arrived(self, user: str, answers_ts_ms: int, arrival_ms: float) -> None:
        with self.lock:
            queue = self.pending.get(user)
            while queue and queue[0] <= answers_ts_ms:
                self.latencies_ms.append(arrival_ms - queue.popleft())

    def lost(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.pending.values())


def offer(
    broker: Broker,
    topic: str,
    rate: float,
    seconds: float,
    items: list[str],
    users: int,
    delivery: Delivery,
    seed: int,
) -> int:
    """Send events at ``rate`` per second for ``seconds``; each event's ts is its send time."""
    from consumer.codec import encode_event
    from learner.types import Event

    rng = random.Random(seed)
    producer = broker.producer(linger_ms=0)
    total = int(rate * seconds)
    start = time.perf_counter()
    try:
        for i in range(total):
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            user = f"lat-u{rng.randrange(users)}"
            now_ms = int(time.time() * 1000)
            event = Event(f"lat-{seed}-{i}", user, rng.choice(items), "click", None, now_ms)
            delivery.sent(user, now_ms)
            producer.send(topic, key=user.encode(), value=encode_event(event))
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return total


def measure(
    broker: Broker,
    mode: str,
    rate: float,
    args: argparse.Namespace,
    items: list[Any],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    from consumer.codec import encode_item

    prefix = f"lat-{run_id()}."
    broker.create_topics(
        {
            f"{prefix}events": args.partitions,
            f"{prefix}bare.out": args.partitions,
            f"{prefix}recommendations": args.partitions,
            f"{prefix}events.dlq": 1,
        }
    )
    broker.create_topics({f"{prefix}items": 1}, {"cleanup.policy": "compact"})
    out_topic = f"{prefix}recommendations" if mode == "worker" else f"{prefix}bare.out"
    ready = ""
    if mode == "worker":
        produce_all(
            broker,
            f"{prefix}items",
            [(it.item_id.encode(), encode_item(it)) for it in items],
            label="items",
        )
        proc, ready = start_worker(broker, prefix, args.batch_size, env)
        wait_ready(ready, proc)
    else:
        proc = start_bare(broker, prefix, args.batch_size)
    try:
        reader = KafkaConsumer(
            bootstrap_servers=broker.bootstrap.split(","),
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        parts = [TopicPartition(out_topic, p) for p in range(args.partitions)]
        reader.assign(parts)
        reader.seek_to_end(*parts)
        # Warm up: the loop has joined its group once a first event comes back.
        warm = Delivery()
        offer(broker, f"{prefix}events", 50, 1, [it.item_id for it in items], 10, warm, seed=99)
        deadline = time.monotonic() + 120
        while warm.latencies_ms == [] and time.monotonic() < deadline:
            read(reader, mode, warm)
        if not warm.latencies_ms:
            raise SystemExit(
                f"{mode}: nothing came back from the warm-up events; its log:\n{_log_tail(proc)}"
            )
        reader.seek_to_end(*parts)
        metrics = ready.replace("/readyz", "/metrics")
        before = scrape(metrics) if mode == "worker" else {}  # the worker's start-up left out
        delivery = Delivery()
        log(f"{mode} at {rate:g} events/s for {args.seconds:g}s")
        sender = threading.Thread(
            target=offer,
            args=(
                broker,
                f"{prefix}events",
                rate,
                args.seconds,
                [it.item_id for it in items],
                args.users,
                delivery,
                1,
            ),
        )
        sender.start()
        while sender.is_alive():
            read(reader, mode, delivery)
        drain_until = time.monotonic() + args.drain
        while delivery.lost() and time.monotonic() < drain_until:
            read(reader, mode, delivery)
        reader.close()
        stages = worker_stages(before, scrape(metrics)) if mode == "worker" else {}
        if stages:
            log("worker ms per batch: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = sorted(delivery.latencies_ms)
    return {
        "mode": mode,
        "offered_rate": rate,
        "delivered": len(lat),
        "lost": delivery.lost(),
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "worker_ms_per_batch": stages,
    }


Histograms = dict[str, dict[str, Any]]


def scrape(url: str) -> Histograms:
    """The worker's stage, collector-pause and batch-size histograms from its /metrics, keyed
    by stage name, ``gc0``-``gc2``, and ``batch``: ``{"sum", "count", "buckets": {le: n}}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: Histograms = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (
            "freshrec_stage_seconds",
            "freshrec_gc_pause_seconds",
            "freshrec_batch_size_events",
        ):
            continue
        for sample in family.samples:
            labels = sample.labels
            key = labels.get("stage") or (
                f"gc{labels['generation']}" if "generation" in labels else "batch"
            )
            h = out.setdefault(key, {"sum": 0.0, "count": 0.0, "buckets": {}})
            kind = sample.name.rsplit("_", 1)[1]
            if kind in ("sum", "count"):
                h[kind] = sample.value
            elif kind == "bucket":
                h["buckets"][float(labels["le"])] = sample.value
    return out


def worker_stages(before: Histograms, after: Histograms) -> dict[str, float]:
    """What the worker did between two scrapes: mean milliseconds per micro-batch in each
    stage (where the latency goes) with the bucket bound each stage's p99 falls under, the
    mean batch size, and the garbage collector's pauses per generation (count, total, and
    the bound the longest fits under), which fall between and inside stages."""
    empty: dict[str, Any] = {"sum": 0.0, "count": 0.0, "buckets": {}}
    out: dict[str, float] = {}
    for key, h in after.items():
        b = before.get(key, empty)
        count, total = h["count"] - b["count"], h["sum"] - b["sum"]
        if not count:
            continue
        bounds = sorted((le, n - b["buckets"].get(le, 0.0)) for le, n in h["buckets"].items())
        if key == "batch":
            out["events per batch"] = round(total / count, 1)
        elif key.startswith("gc"):
            out[f"{key} pauses"] = count
            out[f"{key} total ms"] = round(1000.0 * total, 1)
            out[f"{key} max <="] = round(1000.0 * next(le for le, n in bounds if n >= count), 1)
        else:
            out[key] = round(1000.0 * total / count, 1)
            p99 = next(le for le, n in bounds if n >= 0.99 * count)
            out[f"{key} p99 <="] = round(1000.0 * p99, 1)
    return out


def read(reader: Any, mode: str, delivery: Delivery) -> None:
    polled = reader.poll(timeout_ms=50)
    arrival_ms = time.time() * 1000
    for records in polled.values():
        for rec in records:
            msg = msgpack.unpackb(rec.value, raw=False)
            if mode == "worker":
                delivery.arrived(msg["user_id"], msg["event_ts"], arrival_ms)
            else:
                delivery.arrived(msg["user_id"], msg["ts"], arrival_ms)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 1)


def measure_rate(
    broker: Broker, rate: float, args: argparse.Namespace, items: Any, compare: dict[str, str]
) -> dict[str, Any]:
    """One table row: ``args.rounds`` rounds of the bare loop, the worker and (with
    ``compare``) the compared worker at ``rate``, each figure the median over the rounds.

    A worker run second was often slower for reasons of its own, so the two workers take
    turns going first (``--compare-first`` says who starts), and one round decides nothing.
    """
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "worker": [], "compared": []}
    for round_no in range(args.rounds):
        runs["bare"].append(measure(broker, "bare", rate, args, items))
        order = run_order(round_no, bool(compare), args.compare_first)
        for name in order:
            extra = compare if name == "compared" else None
            runs[name].append(measure(broker, "worker", rate, args, items, extra))
        log(
            f"{rate:g}/s round {round_no + 1}/{args.rounds} ({' then '.join(order)}): p99 "
            + ", ".join(f"{n} {runs[n][-1]['p99_ms']} ms" for n in ("bare", *order))
        )
    bare, worker = _summary("bare", runs["bare"]), _summary("worker", runs["worker"])
    row: dict[str, Any] = {
        "offered_rate": rate,
        "rounds": args.rounds,
        **bare,
        **worker,
        "p99_ratio": round(worker["worker_p99_ms"] / bare["bare_p99_ms"], 2)
        if bare["bare_p99_ms"]
        else None,
        "events": sum(r["delivered"] + r["lost"] for r in runs["bare"]),
        # What the worker did in its last round's window (from its /metrics).
        "worker_ms_per_batch": runs["worker"][-1]["worker_ms_per_batch"],
    }
    if compare:
        row.update(
            {
                "compared_first": args.compare_first,
                "compared_env": args.compare_env,
                **_summary("compared", runs["compared"]),
                "compared_ms_per_batch": runs["compared"][-1]["worker_ms_per_batch"],
            }
        )
    return row


def run_order(round_no: int, compare: bool, compare_first: bool) -> list[str]:
    """The worker runs of round ``round_no`` (from 0), in order: the compared worker goes
    first in every other round, starting with round 0 if ``compare_first``.

    >>> [run_order(r, True, False) for r in range(3)]
    [['worker', 'compared'], ['compared', 'worker'], ['worker', 'compared']]
    >>> run_order(0, True, True), run_order(1, False, True)
    (['compared', 'worker'], ['worker'])
    """
    if not compare:
        return ["worker"]
    first_compared = compare_first != (round_no % 2 == 1)
    return ["compared", "worker"] if first_compared else ["worker", "compared"]


def _summary(loop: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A loop's row fields, named ``{loop}_...``: each percentile's median over ``runs``
    (``measure`` results), lost events summed, and the p99 of each round.

    >>> _summary("bare", [{"p50_ms": 1, "p95_ms": 2, "p99_ms": 3, "lost": 0},
    ...                   {"p50_ms": 2, "p95_ms": 4, "p99_ms": 9, "lost": 1},
    ...                   {"p50_ms": 3, "p95_ms": 3, "p99_ms": 5, "lost": 0}])
    ... # doctest: +NORMALIZE_WHITESPACE
    {'bare_p50_ms': 2, 'bare_p95_ms': 3, 'bare_p99_ms': 5, 'bare_lost': 1,
     'bare_p99_ms_by_round': [3, 9, 5]}
    """
    out: dict[str, Any] = {
        f"{loop}_{key}": round(statistics.median(r[key] for r in runs), 1)
        for key in ("p50_ms", "p95_ms", "p99_ms")
    }
    out[f"{loop}_lost"] = sum(r["lost"] for r in runs)
    out[f"{loop}_p99_ms_by_round"] = [r["p99_ms"] for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start one on 29092)")
    parser.add_argument(
        "--rates", default="500,2000", help="offered events/s (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="offering time per run (default: %(default)s)"
    )
    parser.add_argument(
        "--users", type=int, default=20_000, help="distinct users (default: %(default)s)"
    )
    parser.add_argument(
        "--partitions", type=int, default=8, help="topic partitions (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="max records per poll, both loops (default: %(default)s)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=60.0,
        help="wait this long for late answers (default: %(default)s)",
    )
    parser.add_argument(
        "--compare-env",
        metavar="KEY=VALUE[,KEY=VALUE]",
        default="",
        help="also measure a worker run with these extra environment settings, in the same run "
        "(for example FRESHREC_GC_FREEZE=false); reported as 'compared'",
    )
    parser.add_argument(
        "--compare-first",
        action="store_true",
        help="run the --compare-env worker before the plain one in the first round (default: "
        "after it); with --rounds the two take turns going first",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each loop this many times per rate and report medians; with "
        "--compare-env the two workers take turns going first (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--logs", type=Path, help="keep each loop's log in this folder (default: thrown away)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.logs:
        global LOG_DIR
        args.logs.mkdir(parents=True, exist_ok=True)
        LOG_DIR = args.logs
    compare = dict(kv.split("=", 1) for kv in args.compare_env.split(",") if kv)

    from consumer import datasets

    items = datasets.load_ml100k_items(datasets.fetch_ml100k(progress=False))
    broker = Broker.ensure(args.bootstrap)
    rows = []
    try:
        for rate in [float(r) for r in args.rates.split(",")]:
            rows.append(measure_rate(broker, rate, args, items, compare))
    finally:
        broker.stop()
    headers = [
        "offered events/s",
        "rounds",
        "bare p50 / p95 / p99 ms",
        "worker p50 / p95 / p99 ms",
        "p99 worker / bare",
        "lost (bare, worker)",
    ]
    if compare:
        headers.append(f"worker with {args.compare_env}: p50 / p95 / p99 ms")
    print(
        markdown_table(
            headers,
            [
                [
                    f"{r['offered_rate']:,.0f}",
                    r["rounds"],
                    f"{r['bare_p50_ms']} / {r['bare_p95_ms']} / {r['bare_p99_ms']}",
                    f"{r['worker_p50_ms']} / {r['worker_p95_ms']} / {r['worker_p99_ms']}",
                    r["p99_ratio"],
                    f"{r['bare_lost']}, {r['worker_lost']}",
                ]
                + (
                    [f"{r['compared_p50_ms']} / {r['compared_p95_ms']} / {r['compared_p99_ms']}"]
                    if compare
                    else []
                )
                for r in rows
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
