"""Soak: several ``freshrec worker`` processes under steady load; is their resource use flat?

    .venv/bin/python bench/soak.py                 # 30 min, 3 workers, 1M users, 600 events/s
    .venv/bin/python bench/soak.py --minutes 3 --sample-s 30 --users 200000 --json soak.json
    .venv/bin/python bench/soak.py --worker-env FRESHREC_MAX_USERS_IN_MEMORY=100000

It creates a fresh set of topics (``--partitions`` event partitions), writes a synthetic catalog
of ``--items`` items (consumer.datasets.synthetic_catalog) to the items topic, and starts
``--workers`` worker processes (``python -m consumer.cli worker``) in one consumer group, each on
its own metrics port (read from its log) and one torch thread (the workers share the machine's
cores). Once every worker is ready and the group has spread the partitions, a producer thread
offers ``--rate`` events/s for ``--minutes``: each event's user is drawn uniformly from
``--users`` distinct users (drawn as needed, never listed up front), its item by Zipf popularity,
its type 60/30/10 view/click/purchase, its ``ts`` the send time, its ``event_id`` unique.

Every ``--sample-s`` seconds (and once at the start), for each worker: RSS (VmRSS) and threads
from /proc/<pid>/status, open files (entries of /proc/<pid>/fd), and from its /metrics the
consumer lag (sum of ``freshrec_consumer_lag_events``), ``freshrec_users_in_state`` and
``freshrec_events_processed_total``; beside them the producer's sent count and the group's lag
as the broker sees it (end offsets minus committed offsets). At the end the workers get SIGTERM
and must exit 0 with their clean-stop line; the script prints the samples as a markdown table,
a "flat?" verdict per series and worker (median of the last third of samples against the
median of the middle third, with the growth per minute between them; RSS growth is set against
the growth of users in state), writes the samples and settings as JSON (``--json``) and saves
a 4-panel plot (RSS MiB, open files, threads, lag over minutes, one line per worker) to
``--plot``. Flat is the target; the verdicts report it, they do not set the exit status,
which is 1 only when the soak itself failed (a worker died or did not stop cleanly, the
producer failed, Ctrl-C).

``--worker-env KEY=VALUE`` (repeatable) adds worker settings, e.g. a setting another branch
adds; a key that this checkout's ``freshrec worker`` does not know is reported (the worker
would silently ignore it). Worker logs stay in ``--logs``. The run's topics are deleted at the
end unless ``--keep-topics``. The broker is started on port 29092 unless ``--bootstrap`` names
one.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kafka_rig import ROOT, Broker, log, markdown_table, produce_all, run_id

PY = sys.executable
METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")
SETTINGS_LINE = re.compile(r"settings: (.*)$", re.MULTILINE)
CLEAN_STOP = "stopped cleanly"
MIB = 1 << 20
SERIES = ("rss_mib", "open_files", "threads", "lag")
SERIES_TITLES = {
    "rss_mib": "RSS (MiB)",
    "open_files": "open files",
    "threads": "threads",
    "lag": "consumer lag (events)",
    "group_lag": "uncommitted events",
}
# What the soak sets for every worker unless --worker-env says otherwise.
SOAK_WORKER_ENV = {
    "FRESHREC_DEVICE": "cpu",
    "FRESHREC_TORCH_THREADS": "1",  # several workers share the cores: no oversubscription
    "FRESHREC_METRICS_HOST": "127.0.0.1",
    "FRESHREC_METRICS_PORT": "0",
    "FRESHREC_POLL_TIMEOUT_MS": "200",
}
_EVENT_MIX = (("view", 0.6), ("click", 0.3), ("purchase", 0.1))
_ZIPF_EXPONENT = 1.05
_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


# -- load ------------------------------------------------------------------------------------


class EventStream:
    """Encoded events over ``users`` distinct users, made one at a time as they are sent.

    Examples
    --------
    >>> stream = EventStream(["i0", "i1", "i2"], users=1_000_000, seed=1, tag="t")
    >>> key, value = stream.next(1_700_000_000_000)
    >>> key.startswith(b"soak-u")
    True
    >>> import msgpack
    >>> event = msgpack.unpackb(value)
    >>> event["event_id"], event["ts"], event["item_id"] in {"i0", "i1", "i2"}
    ('soak-t-0', 1700000000000, True)
    >>> msgpack.unpackb(stream.next(0)[1])["event_id"]
    'soak-t-1'
    """

    def __init__(self, item_ids: Sequence[str], *, users: int, seed: int, tag: str) -> None:
        from consumer.codec import encode_event
        from learner.types import Event

        if users < 1 or not item_ids:
            raise ValueError("need at least one user and one item")
        self._encode, self._event = encode_event, Event
        self.rng = random.Random(seed)
        self.users = users
        self.tag = tag
        ranks = list(range(1, len(item_ids) + 1))
        self.rng.shuffle(ranks)  # popularity unrelated to item id order
        self.item_ids = list(item_ids)
        self.item_cum = list(itertools.accumulate(rank**-_ZIPF_EXPONENT for rank in ranks))
        self.type_names = [name for name, _ in _EVENT_MIX]
        self.type_cum = list(itertools.accumulate(share for _, share in _EVENT_MIX))
        self.count = 0

    def next(self, ts_ms: int) -> tuple[bytes, bytes]:
        rng = self.rng
        user = f"soak-u{rng.randrange(self.users)}"
        at = bisect.bisect_left(self.item_cum, rng.random() * self.item_cum[-1])
        item = self.item_ids[min(at, len(self.item_ids) - 1)]
        kind = bisect.bisect_left(self.type_cum, rng.random() * self.type_cum[-1])
        event_type: Any = self.type_names[min(kind, len(self.type_names) - 1)]
        event = self._event(f"soak-{self.tag}-{self.count}", user, item, event_type, None, ts_ms)
        self.count += 1
        return user.encode(), self._encode(event)


class Offer(threading.Thread):
    """Offers ``rate`` events/s to ``topic`` until stopped; counts what was sent and acked."""

    def __init__(self, broker: Broker, topic: str, rate: float, stream: EventStream) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.broker, self.topic, self.rate, self.stream = broker, topic, rate, stream
        self.stopping = threading.Event()
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def _ok(self, _: Any) -> None:
        with self._lock:
            self.acked += 1

    def _failed(self, _: Any) -> None:
        with self._lock:
            self.failed += 1

    def run(self) -> None:
        try:
            producer = self.broker.producer(linger_ms=10)
            try:
                start = time.monotonic()
                while not self.stopping.is_set():
                    due = int((time.monotonic() - start) * self.rate)
                    now_ms = int(time.time() * 1000)
                    while self.sent < due:
                        key, value = self.stream.next(now_ms)
                        future = producer.send(self.topic, key=key, value=value)
                        future.add_callback(self._ok).add_errback(self._failed)
                        self.sent += 1
                    self.stopping.wait(0.02)
                producer.flush(timeout=30)
            finally:
                producer.close(timeout=10)
        except BaseException as err:  # reported by the sampler, which stops the soak
            self.error = err

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


# -- workers ---------------------------------------------------------------------------------


@dataclass
class WorkerProc:
    name: str
    client_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str = ""
    settings: str = ""
    exit_code: int | None = None
    clean_stop: bool = False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]


def worker_env(prefix: str, args: argparse.Namespace, broker: Broker) -> dict[str, str]:
    """The settings every worker gets: the soak's, then --worker-env on top."""
    env = {
        "FRESHREC_BOOTSTRAP_SERVERS": broker.bootstrap,
        "FRESHREC_TOPIC_PREFIX": prefix,
        "FRESHREC_GROUP_ID": f"{prefix}workers",
        "FRESHREC_PARTITIONS": str(args.partitions),
        **SOAK_WORKER_ENV,
    }
    env.update(args.worker_env)
    return env


def unknown_settings(env: dict[str, str]) -> list[str]:
    """Keys the worker of this checkout does not read (it ignores them without a word).

    >>> unknown_settings({"FRESHREC_BATCH_SIZE": "5", "FRESHREC_NO_SUCH_THING": "1"})
    ['FRESHREC_NO_SUCH_THING']
    """
    from dataclasses import fields

    from consumer.config import WorkerConfig, env_name

    known = {env_name(f.name) for f in fields(WorkerConfig)}
    return sorted(k for k in env if k not in known)


def masked(env: dict[str, str]) -> dict[str, str]:
    """
    >>> masked({"FRESHREC_SASL_PASSWORD": "x", "FRESHREC_TOP_K": "5"})
    {'FRESHREC_SASL_PASSWORD': '********', 'FRESHREC_TOP_K': '5'}
    """
    return {k: "********" if _SECRET.search(k) else v for k, v in env.items()}


def start_workers(n: int, env: dict[str, str], logs: Path, run: str) -> list[WorkerProc]:
    # FRESHREC_* settings of the caller's shell are passed on too (and recorded), as a shell
    # user would expect; the soak's own settings win over them.
    base = dict(os.environ, **env)
    workers = []
    for k in range(n):
        log_path = logs / f"{run}-worker{k}.log"
        client_id = f"soak-{run}-w{k}"  # how the group's members are told apart
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [PY, "-m", "consumer.cli", "worker"],
                cwd=ROOT,
                env=dict(base, FRESHREC_CLIENT_ID=client_id),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches this script only,
                # which then stops each worker with one SIGTERM (a second would kill it).
                process_group=0,
            )
        workers.append(WorkerProc(f"w{k}", client_id, proc, log_path))
    return workers


def wait_started(
    workers: list[WorkerProc], group: Group, partitions: int, timeout_s: float
) -> None:
    """Each worker's metrics address logged, each ready, and every partition assigned with
    each worker owning some, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for w in workers:
        while not w.metrics_url:
            check_alive([w])
            text = w.log_text()
            found = METRICS_URL.search(text)
            if found:
                w.metrics_url = found.group(1)
                settings = SETTINGS_LINE.search(text)
                w.settings = settings.group(1).strip() if settings else ""
                break
            if time.monotonic() > deadline:
                raise SoakError(f"{w.name} logged no metrics address:\n{w.tail()}")
            time.sleep(0.5)
    for w in workers:
        ready = w.metrics_url.removesuffix("/metrics") + "/readyz"
        while not _ok(ready):
            check_alive(workers)
            if time.monotonic() > deadline:
                raise SoakError(f"{w.name} not ready after {timeout_s:.0f}s:\n{w.tail()}")
            time.sleep(1.0)
        log(f"{w.name} (pid {w.proc.pid}) ready, metrics on {w.metrics_url}")
    while True:
        check_alive(workers)
        state, owned = group.owners()
        counts = [len(owned.get(w.client_id, [])) for w in workers]
        if state == "Stable" and sum(counts) == partitions and all(counts):
            log(f"partitions spread over the group: {counts}")
            return
        if time.monotonic() > deadline:
            raise SoakError(
                f"the group did not settle within {timeout_s:.0f}s: {state}, owned {owned}"
            )
        time.sleep(1.0)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def check_alive(workers: list[WorkerProc]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise SoakError(f"{w.name} exited with {w.proc.returncode}:\n{w.tail()}")


def stop_workers(workers: list[WorkerProc], timeout_s: float = 90.0) -> None:
    """SIGTERM each worker, wait for all, kill any that outlast ``timeout_s``."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{w.name} still running {timeout_s:.0f}s after SIGTERM: killed")
            w.proc.kill()
            w.proc.wait(timeout=30)
        w.exit_code = w.proc.returncode
        w.clean_stop = w.exit_code == 0 and CLEAN_STOP in w.log_text()


# -- sampling --------------------------------------------------------------------------------


class SoakError(Exception):
    """The soak could not go on: a worker died, the producer failed, a wait ran out."""


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MiB), threads, open files and CPU seconds so far of a live process, from /proc.

    >>> sorted(proc_stats(os.getpid()))
    ['cpu_s', 'open_files', 'rss_mib', 'threads']
    """
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()  # fields 3.. of proc(5); 14, 15: CPU
    ticks = int(after_name[11]) + int(after_name[12])
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) * 1024 / MIB, 1),
        "threads": int(fields["Threads"]),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": round(ticks / os.sysconf("SC_CLK_TCK"), 2),
    }


def scrape(url: str, timeout_s: float = 10.0) -> tuple[dict[str, float], dict[int, float]]:
    """A worker's /metrics: every sample ``name`` (summed over labels) -> value, and its
    ``freshrec_consumer_lag_events`` per partition label."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    lag: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
            if s.name == "freshrec_consumer_lag_events":
                partition = int(s.labels["partition"])
                lag[partition] = lag.get(partition, 0.0) + s.value
    return totals, lag


class Group:
    """The consumer group as the broker sees it: who owns which partition (by client id, which
    the soak makes unique per worker) and each partition's lag (end minus committed offset).
    The workers' own gauges can go stale when a partition leaves a worker, this cannot."""

    def __init__(self, broker: Broker, topic: str, group: str) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        self.topic, self.group = topic, group
        self.admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap.split(","))
        self.consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap.split(","))

    def owners(self) -> tuple[str, dict[str, list[int]]]:
        """The group's state and client id -> partitions of the events topic."""
        described = self.admin.describe_groups([self.group])[self.group]
        owned: dict[str, list[int]] = {}
        for member in described.get("members") or []:
            parts = owned.setdefault(member["client_id"], [])
            for assigned in (member.get("member_assignment") or {}).get("assigned_partitions", []):
                if assigned["topic"] == self.topic:
                    parts.extend(assigned["partitions"])
        return str(described.get("group_state")), owned

    def lag(self) -> dict[int, int]:
        """Partition -> records not yet committed by the group."""
        from kafka import TopicPartition

        parts = self.consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        ends = self.consumer.end_offsets(tps)
        committed = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        out = {}
        for tp in tps:
            done = committed.get(tp)
            out[tp.partition] = ends[tp] - (
                done.offset if done is not None and done.offset >= 0 else 0
            )
        return out

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


@dataclass
class Sampler:
    workers: list[WorkerProc]
    offer: Offer | None
    group: Group
    start: float = field(default_factory=time.monotonic)
    rows: list[dict[str, Any]] = field(default_factory=list)
    _last_cpu: dict[str, tuple[float, float]] = field(default_factory=dict)

    def sample(self) -> None:
        now = time.monotonic()
        minute = round((now - self.start) / 60, 2)
        owned: dict[str, list[int]] | None
        committed_lag: dict[int, int] | None
        try:
            _, owned = self.group.owners()
            committed_lag = self.group.lag()
        except Exception as err:  # a slow broker answer costs one sample's value, not the soak
            log(f"group not read: {err!r}")
            owned, committed_lag = None, None
        group_lag = None if committed_lag is None else sum(committed_lag.values())
        sent = self.offer.sent if self.offer else 0
        line = []
        for w in self.workers:
            row: dict[str, Any] = {"minute": minute, "worker": w.name, "pid": w.proc.pid}
            try:
                row.update(proc_stats(w.proc.pid))
            except OSError as err:  # gone between the liveness check and now
                raise SoakError(f"{w.name} vanished: {err!r}\n{w.tail()}") from err
            then = self._last_cpu.get(w.name)
            row["cpu_pct"] = (
                round(100 * (row["cpu_s"] - then[1]) / (now - then[0]), 1) if then else None
            )
            self._last_cpu[w.name] = (now, row["cpu_s"])
            mine = None if owned is None else sorted(owned.get(w.client_id, []))
            row["partitions"] = mine
            row["lag_committed"] = (
                None
                if mine is None or committed_lag is None
                else sum(committed_lag.get(p, 0) for p in mine)
            )
            try:
                totals, lag = scrape(w.metrics_url)
            except OSError as err:  # a worker too busy to answer in time: a gap, not an end
                log(f"{w.name}: /metrics not read: {err!r}")
                row.update(lag=None, lag_all_gauges=None, users_in_state=None, processed=None)
            else:
                # The worker keeps the gauge of a partition it gave up at its last value: count
                # the partitions it owns now (all of them if the broker did not answer).
                row["lag"] = int(sum(v for p, v in lag.items() if mine is None or p in mine))
                row["lag_all_gauges"] = int(sum(lag.values()))
                row["users_in_state"] = int(totals.get("freshrec_users_in_state", 0))
                row["processed"] = int(totals.get("freshrec_events_processed_total", 0))
            row["producer_sent"] = sent
            row["group_lag"] = group_lag
            self.rows.append(row)
            line.append(
                f"{w.name} rss {row['rss_mib']:.0f}M fds {row['open_files']} thr "
                f"{row['threads']} cpu {row['cpu_pct']}% lag {row['lag']} "
                f"users {row['users_in_state']}"
            )
        log(f"min {minute:5.2f} sent {sent:,} group lag {group_lag} | " + " | ".join(line))


# -- verdict ---------------------------------------------------------------------------------


def tolerance(series: str, middle: float, rate: float) -> float:
    """How far the last third's median may rise above the middle third's and still be flat:
    RSS 2 % (at least 20 MiB: allocator noise), open files 2, threads 1, lag one second of
    the offered load (at least 50 events)."""
    if series == "rss_mib":
        return max(20.0, 0.02 * middle)
    if series == "open_files":
        return 2.0
    if series == "threads":
        return 1.0
    return max(50.0, rate)


def verdict(rows: list[dict[str, Any]], series: str, worker: str, rate: float) -> dict[str, Any]:
    """Median of the last third of ``worker``'s samples of ``series`` against the middle
    third's: flat unless it rose by more than :func:`tolerance`. The growth per minute is
    between the two medians' times. For RSS, the growth of users in state over the same
    samples is reported beside it, in bytes of RSS per added user.

    >>> rows = [{"minute": m, "worker": "w0", "rss_mib": 100.0 + 10 * m, "users_in_state": 0}
    ...         for m in range(10)]
    >>> v = verdict(rows, "rss_mib", "w0", 400)
    >>> v["flat"], v["growth_per_min"], v["note"]
    (False, 10.0, 'grows while users in state do not')
    >>> verdict(rows[:2], "rss_mib", "w0", 400)["flat"] is None
    True
    """
    mine = [r for r in rows if r["worker"] == worker and r.get(series) is not None]
    out: dict[str, Any] = {"series": series, "worker": worker, "flat": None, "note": ""}
    end = max((r["minute"] for r in mine), default=0.0)
    middle = [r for r in mine if end / 3 <= r["minute"] <= 2 * end / 3]
    last = [r for r in mine if r["minute"] > 2 * end / 3]
    if not middle or not last:
        out["note"] = "too few samples"
        return out
    mid_v = statistics.median(r[series] for r in middle)
    last_v = statistics.median(r[series] for r in last)
    dt = statistics.median(r["minute"] for r in last) - statistics.median(
        r["minute"] for r in middle
    )
    tol = tolerance(series, mid_v, rate)
    out.update(
        middle_median=round(mid_v, 1),
        last_median=round(last_v, 1),
        growth_per_min=round((last_v - mid_v) / dt if dt > 0 else 0.0, 2),
        tolerance=round(tol, 1),
        flat=last_v - mid_v <= tol,
    )
    notes = []
    if last_v < mid_v - tol:
        notes.append("falling")
    if series == "rss_mib":
        u_mid, u_last = _median_of(middle, "users_in_state"), _median_of(last, "users_in_state")
        if u_mid is not None and u_last is not None and u_last > u_mid:
            per_user = (last_v - mid_v) * MIB / (u_last - u_mid)
            notes.append(
                f"users in state {u_mid:,.0f} -> {u_last:,.0f}, ~{per_user:,.0f} B RSS per "
                "added user"
            )
            if not out["flat"]:
                notes.append("grows with the users kept in memory")
        elif not out["flat"]:
            notes.append("grows while users in state do not")
    out["note"] = "; ".join(notes)
    return out


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def verdicts(rows: list[dict[str, Any]], workers: list[str], rate: float) -> list[dict[str, Any]]:
    """Every series of every worker, then the group's committed lag (as the broker sees it)."""
    out = [verdict(rows, s, w, rate) for s in SERIES for w in workers]
    if workers:
        group = verdict(rows, "group_lag", workers[0], rate)
        group["worker"] = "group (broker)"
        out.append(group)
    return out


# -- output ----------------------------------------------------------------------------------


def number(value: float | None) -> str:
    """
    >>> number(21.0), number(1005.44), number(None), number(-3)
    ('21', '1,005.4', '-', '-3')
    """
    if value is None:
        return "-"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def print_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    headers = [
        "minute",
        "worker",
        "RSS MiB",
        "open files",
        "threads",
        "CPU %",
        "lag",
        "users in state",
        "processed",
        "partitions",
        "producer sent",
        "group lag (broker)",
    ]
    print(
        markdown_table(
            headers,
            [
                [
                    f"{r['minute']:g}",
                    r["worker"],
                    f"{r['rss_mib']:,.0f}",
                    r["open_files"],
                    r["threads"],
                    number(r["cpu_pct"]),
                    number(r["lag"]),
                    number(r["users_in_state"]),
                    number(r["processed"]),
                    "-" if r["partitions"] is None else ",".join(map(str, r["partitions"])),
                    f"{r['producer_sent']:,}",
                    number(r["group_lag"]),
                ]
                for r in rows
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["series", "worker", "middle third", "last third", "growth / min", "flat?", "note"],
            [
                [
                    SERIES_TITLES[c["series"]],
                    c["worker"],
                    number(c.get("middle_median")),
                    number(c.get("last_median")),
                    "-" if c.get("growth_per_min") is None else f"{c['growth_per_min']:+,.2f}",
                    "n/a" if c["flat"] is None else "yes" if c["flat"] else "**no**",
                    c["note"],
                ]
                for c in checks
            ],
        )
    )


def plot(rows: list[dict[str, Any]], workers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, series in zip(axes.flat, SERIES, strict=True):
        for k, w in enumerate(workers):
            mine = [r for r in rows if r["worker"] == w and r.get(series) is not None]
            ax.plot(
                [r["minute"] for r in mine],
                [r[series] for r in mine],
                marker=".",
                linestyle=("-", "--", ":", "-.")[k % 4],  # equal series stay visible
                label=w,
            )
        if series == "lag" and workers:
            mine = [r for r in rows if r["worker"] == workers[0] and r["group_lag"] is not None]
            ax.plot(
                [r["minute"] for r in mine],
                [r["group_lag"] for r in mine],
                color="black",
                linewidth=0.8,
                label="group, uncommitted (broker)",
            )
            ax.legend(fontsize=8)
        ax.set_title(SERIES_TITLES[series])
        ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes under load")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("FRESHREC_"):
        raise argparse.ArgumentTypeError(f"expected FRESHREC_NAME=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start one on 29092)")
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="time under load (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=3, help="worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--users", type=int, default=1_000_000, help="distinct users (default: %(default)s)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=600.0,
        help="offered events/s (default: %(default)s; half of a rate that 3 workers kept up "
        "with on a busy 2-core box: 1,200/s over 200,000 users, about 30%% of a core each)",
    )
    parser.add_argument(
        "--sample-s",
        type=float,
        default=60.0,
        help="seconds between samples (default: %(default)s)",
    )
    parser.add_argument(
        "--items", type=int, default=2000, help="synthetic catalog size (default: %(default)s)"
    )
    parser.add_argument(
        "--partitions", type=int, default=6, help="events topic partitions (default: %(default)s)"
    )
    parser.add_argument(
        "--worker-env",
        type=key_value,
        action="append",
        default=[],
        metavar="FRESHREC_NAME=VALUE",
        help="a worker setting, repeatable; overrides the soak's own ("
        + ", ".join(f"{k}={v}" for k, v in SOAK_WORKER_ENV.items())
        + ")",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds for the workers to load the catalog and share the partitions "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write settings, samples and verdicts here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=ROOT / "docs/reliability/soak.png",
        help="the 4-panel PNG (default: docs/reliability/soak.png)",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        help="directory for the worker logs (default: a new one under the temp directory)",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="leave the run's topics on the broker"
    )
    args = parser.parse_args(argv)
    args.worker_env = dict(args.worker_env)
    if args.workers < 1 or args.users < 1 or args.items < 1 or args.rate <= 0:
        parser.error("--workers, --users, --items and --rate must be positive")
    if args.sample_s <= 0 or args.minutes <= 0:
        parser.error("--minutes and --sample-s must be positive")
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # the finally blocks stop what we started
    run = run_id()
    prefix = f"soak-{run}."
    logs = args.logs or Path(tempfile.mkdtemp(prefix="freshrec-soak-"))
    logs.mkdir(parents=True, exist_ok=True)

    broker = Broker.ensure(args.bootstrap)
    env = worker_env(prefix, args, broker)
    inherited = {k: v for k, v in os.environ.items() if k.startswith("FRESHREC_") and k not in env}
    settings = masked({**inherited, **env})
    unknown = unknown_settings({k: v for k, v in settings.items() if k in args.worker_env})
    log("worker settings: " + " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    for key in unknown:
        log(f"warning: {key} is not a setting of this checkout's worker: it will be ignored")
    log(f"worker logs in {logs}")

    workers: list[WorkerProc] = []
    offer: Offer | None = None
    group: Group | None = None
    sampler: Sampler | None = None
    error = ""
    try:
        create_topics(broker, prefix, args.partitions)
        produce_catalog(broker, prefix, args)
        workers = start_workers(args.workers, env, logs, run)
        group = Group(broker, f"{prefix}events", f"{prefix}workers")
        wait_started(workers, group, args.partitions, args.start_timeout)
        from consumer.datasets import synthetic_catalog

        items = [it.item_id for it in synthetic_catalog(args.items, seed=args.seed)]
        stream = EventStream(items, users=args.users, seed=args.seed, tag=run)
        offer = Offer(broker, f"{prefix}events", args.rate, stream)
        sampler = Sampler(workers, offer, group)
        log(
            f"offering {args.rate:g} events/s over {args.users:,} users for "
            f"{args.minutes:g} min, sampling every {args.sample_s:g}s"
        )
        offer.start()
        sampler.start = time.monotonic()
        soak(sampler, workers, offer, args)
    except (SoakError, KeyboardInterrupt) as err:
        error = f"{type(err).__name__}: {err}"
        log(f"soak stopped early: {error}")
    finally:
        if offer is not None and offer.is_alive():
            offer.stop()
        stop_workers(workers)
        if group is not None:
            group.close()
        if not args.keep_topics:
            delete_topics(broker, prefix, args.partitions)
        broker.stop()
    for w in workers:
        state = "clean" if w.clean_stop else f"NOT clean (exit {w.exit_code})"
        log(f"{w.name}: stopped {state}; log {w.log_path}")
        if not w.clean_stop:
            sys.stderr.write(w.tail() + "\n")

    rows = sampler.rows if sampler else []
    names = [w.name for w in workers]
    checks = verdicts(rows, names, args.rate)
    print_tables(rows, checks)
    title = (
        f"soak: {args.workers} workers, {args.users:,} users, {args.rate:g} events/s, "
        f"{args.items:,} items, {args.partitions} partitions"
        + ("".join(f", {k}={v}" for k, v in sorted(args.worker_env.items())))
    )
    if rows:
        plot(rows, names, args.plot, title)
        log(f"plot saved to {args.plot}")
    result = {
        "settings": {
            "minutes": args.minutes,
            "workers": args.workers,
            "users": args.users,
            "rate": args.rate,
            "sample_s": args.sample_s,
            "items": args.items,
            "partitions": args.partitions,
            "seed": args.seed,
            "worker_env": settings,
            "worker_env_unknown": unknown,
            "worker_logged_settings": {w.name: w.settings for w in workers},
        },
        "producer": {
            "sent": offer.sent if offer else 0,
            "acked": offer.acked if offer else 0,
            "failed": offer.failed if offer else 0,
        },
        "workers": {
            w.name: {"exit_code": w.exit_code, "clean_stop": w.clean_stop, "log": str(w.log_path)}
            for w in workers
        },
        "samples": rows,
        "verdicts": checks,
        "error": error,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for c in checks:
        if c["flat"] is False:
            log(f"not flat: {c['series']} of {c['worker']}: {c['growth_per_min']:+,.2f}/min")
    return 1 if error or not all(w.clean_stop for w in workers) else 0


def soak(
    sampler: Sampler, workers: list[WorkerProc], offer: Offer, args: argparse.Namespace
) -> None:
    """Sample at 0, sample_s, 2 sample_s, ... up to the end; between samples, check each
    second that the workers and the producer are alive."""
    n = int(args.minutes * 60 / args.sample_s + 1e-9)
    for k in range(n + 1):
        due = sampler.start + k * args.sample_s
        while time.monotonic() < due:
            check_alive(workers)
            if offer.error is not None:
                raise SoakError(f"the producer failed: {offer.error!r}")
            time.sleep(min(1.0, max(0.0, due - time.monotonic())))
        check_alive(workers)
        sampler.sample()
    offer.stop()
    log(f"producer: {offer.sent:,} sent, {offer.acked:,} acked, {offer.failed:,} failed")


def create_topics(broker: Broker, prefix: str, partitions: int) -> None:
    from kafka import KafkaAdminClient

    from consumer.config import WorkerConfig
    from consumer.topics import ensure_topics

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap.split(","))
    try:
        ensure_topics(admin, WorkerConfig(topic_prefix=prefix, partitions=partitions))
    finally:
        admin.close()


def delete_topics(broker: Broker, prefix: str, partitions: int) -> None:
    from kafka import KafkaAdminClient

    from consumer.config import WorkerConfig
    from consumer.topics import topic_specs

    names = list(topic_specs(WorkerConfig(topic_prefix=prefix, partitions=partitions)))
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap.split(","))
        try:
            admin.delete_topics(names)
        finally:
            admin.close()
        log(f"deleted the run's topics ({prefix}*)")
    except Exception as err:  # leftover topics are worth a line, not a failed soak
        log(f"could not delete the run's topics ({prefix}*): {err!r}")


def produce_catalog(broker: Broker, prefix: str, args: argparse.Namespace) -> None:
    from consumer.codec import encode_item
    from consumer.datasets import synthetic_catalog

    items = synthetic_catalog(args.items, seed=args.seed)
    produce_all(
        broker,
        f"{prefix}items",
        [(it.item_id.encode(), encode_item(it)) for it in items],
        label="items",
    )
    log(f"catalog of {len(items):,} items written")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
