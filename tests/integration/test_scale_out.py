"""Scale 1 -> 3 -> 1 workers under a steady stream of events (issue 5, test 3), on the real
broker: no partition ever has two owners, no user's state is lost, recommendations keep coming
in every phase, and each rebalance's duration is measured from the workers' own logs."""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumer.codec import decode_event, encode_event, encode_item
from consumer.config import WorkerConfig
from consumer.datasets import synthetic_catalog, synthetic_events
from consumer.topics import ensure_topics
from learner.encoder import CachedEncoder
from learner.types import Event, Item
from serving.codec import decode_recommendation
from tests.integration.helpers import read_all, wait_for
from tests.integration.test_state_recovery import (
    all_committed,
    assert_same_state,
    changelog,
    reference,
    start_worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(900)]

PARTITIONS = 6
RATE = 300  # events/s, for the whole test
USERS = 200
# Each phase lasts until each of its workers has processed this many more events, so that every
# phase has recommendations of its own (a count, not a sleep). Not "until they caught up with the
# stream": on a shared 2-core machine the workers can fall behind 300 events/s for minutes.
PROGRESS = 1000
STARTUP_S = 240.0  # a worker loads the encoder and the catalog first: slow on a loaded machine

_STAMP = r"(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
# consumer/source.py's rebalance listener: every call, with the partitions it was given.
_MOVE = re.compile(
    _STAMP + r" INFO consumer\.source: partitions (?P<kind>assigned|revoked): (?P<tps>\[.*\])$"
)
_LINE = re.compile("^" + _STAMP + " ")
_METRICS_URL = re.compile(r"metrics on (?P<url>http://\S+)")
_PROCESSED = re.compile(r"^freshrec_events_processed_total (?P<n>\S+)$", re.MULTILINE)


# -- the load --------------------------------------------------------------------------------


class SteadyStream:
    """Sends synthetic events at a fixed rate from a background thread until stopped. Each
    event's ``ts`` is its send time, so a recommendation's ``event_ts`` says when its event
    was produced."""

    def __init__(self, producer: KafkaProducer, topic: str, items: list[Item], rate: float) -> None:
        self.producer = producer
        self.topic = topic
        self.items = items
        self.rate = rate
        self.sent = 0
        self.started_at = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-stream", daemon=True)

    def start(self) -> float:
        self.started_at = time.time()
        self._thread.start()
        return self.started_at

    def stop(self) -> float:
        """Stop sending; returns the time of the stop, once everything sent is acknowledged."""
        self.close()
        stopped_at = time.time()
        self.producer.flush(timeout=60)
        if self.error is not None:
            raise AssertionError(f"the producer thread failed: {self.error!r}") from self.error
        return stopped_at

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _events(self) -> Iterable[Event]:
        chunk = 0
        while True:  # event ids "syn-{chunk}-{k}" never repeat
            yield from synthetic_events(2000, self.items, n_users=USERS, seed=chunk)
            chunk += 1

    def _run(self) -> None:
        try:
            events = iter(self._events())
            start = time.monotonic()
            while not self._stop.is_set():
                due = int((time.monotonic() - start) * self.rate)
                while self.sent < due:
                    ev = replace(next(events), ts=int(time.time() * 1000))
                    self.producer.send(self.topic, key=ev.user_id.encode(), value=encode_event(ev))
                    self.sent += 1
                self._stop.wait(0.02)
        except BaseException as err:  # reported by stop()
            self.error = err


# -- what the workers' logs say ----------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One call of a worker's rebalance listener."""

    at: float  # seconds since the epoch, from the log line (millisecond resolution)
    worker: int
    kind: str  # "assigned" or "revoked"
    partitions: tuple[int, ...]
    line: str


@dataclass(frozen=True)
class Ownership:
    """A worker owned a partition from ``start`` (its assign) until ``end`` (its revoke, or
    its last log line if it never logged one).

    The listener's lines bound what the worker did: kafka-python 3.0 calls the listener only
    inside ``poll()`` and ``close()`` (``join_group_async`` and ``_on_close_prepare_async``),
    while the worker's loop is in that call rather than in a batch, and the worker restores an
    assigned partition's users before it handles the partition's first record."""

    worker: int
    partition: int
    start: float
    end: float

    def overlaps(self, other: Ownership) -> bool:
        # Half-open: a revoke and an assign logged in the same millisecond do not overlap.
        return self.start < other.end and other.start < self.end


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def moves_of(log: Path, worker: int, topic: str) -> list[Move]:
    out = []
    for line in _lines(log):
        m = _MOVE.match(line)
        if m is None:
            continue
        tps = ast.literal_eval(m["tps"])
        parts = tuple(sorted(p for t, p in tps if t == topic))
        out.append(Move(_stamp(m["at"]), worker, m["kind"], parts, line))
    return out


def last_line_at(log: Path) -> float:
    stamps = [_stamp(m["at"]) for line in _lines(log) if (m := _LINE.match(line))]
    return max(stamps) if stamps else 0.0


def owned(moves: Sequence[Move]) -> set[int]:
    """What a worker owns after these listener calls. Cooperative-sticky lists only what
    moved; eager (range) revokes everything, then assigns the full new set: the same
    bookkeeping covers both.

    >>> cooperative = [Move(1.0, 0, "assigned", (0, 1, 2), ""), Move(2.0, 0, "revoked", (2,), "")]
    >>> eager = [Move(1.0, 0, "assigned", (0, 1, 2), ""), Move(2.0, 0, "revoked", (0, 1, 2), ""),
    ...          Move(2.1, 0, "assigned", (0, 1), "")]
    >>> owned(cooperative), owned(eager)
    ({0, 1}, {0, 1})
    """
    now: set[int] = set()
    for m in moves:
        if m.kind == "assigned":
            now |= set(m.partitions)
        else:
            now -= set(m.partitions)
    return now


def ownerships(moves: Sequence[Move], worker: int, end_of_life: float) -> list[Ownership]:
    since: dict[int, float] = {}
    out = []
    for m in moves:
        for p in m.partitions:
            if m.kind == "assigned":
                since.setdefault(p, m.at)
            elif p in since:
                out.append(Ownership(worker, p, since.pop(p), m.at))
    out.extend(Ownership(worker, p, start, end_of_life) for p, start in since.items())
    return out


def double_owners(intervals: Sequence[Ownership]) -> list[tuple[Ownership, Ownership]]:
    """Pairs of different workers' ownerships of one partition that overlap in time.

    >>> old = Ownership(worker=0, partition=3, start=0.0, end=10.0)
    >>> double_owners([old, Ownership(1, 3, 10.0, 20.0)])  # assigned after the revoke
    []
    >>> len(double_owners([old, Ownership(1, 3, 9.5, 20.0)]))  # assigned before it
    1
    """
    by_partition: dict[int, list[Ownership]] = defaultdict(list)
    for o in intervals:
        by_partition[o.partition].append(o)
    found: list[tuple[Ownership, Ownership]] = []
    for same in by_partition.values():
        for i, a in enumerate(same):
            found.extend((a, b) for b in same[i + 1 :] if a.worker != b.worker and a.overlaps(b))
    return found


@dataclass(frozen=True)
class Rebalance:
    """The listener calls of every worker between a scaling command and the next one."""

    name: str
    command_at: float  # workers started, or SIGTERM sent
    moves: tuple[Move, ...]

    @property
    def first(self) -> float:
        return min((m.at for m in self.moves), default=float("nan"))

    @property
    def last_assign(self) -> float:
        return max((m.at for m in self.moves if m.kind == "assigned"), default=float("nan"))

    @property
    def seconds(self) -> float:
        """From the first revoke/assign log line to the last assign."""
        return self.last_assign - self.first

    @property
    def moved(self) -> int:
        """Partitions that ended up with another owner."""
        before: dict[int, int] = {}
        after: dict[int, int] = {}
        for m in self.moves:
            for p in m.partitions:
                if m.kind == "revoked":
                    before.setdefault(p, m.worker)
                else:
                    after[p] = m.worker
        return sum(1 for p, w in after.items() if before.get(p, w) != w)

    @property
    def longest_unowned(self) -> float:
        """The longest a partition went from a revoke to its next assign (nobody owned it)."""
        revoked_at: dict[int, float] = {}
        longest = 0.0
        for m in sorted(self.moves, key=lambda m: m.at):
            for p in m.partitions:
                if m.kind == "revoked":
                    revoked_at[p] = m.at
                elif p in revoked_at:
                    longest = max(longest, m.at - revoked_at.pop(p))
        return longest


def publishing_pause(generated: Sequence[float], start: float, end: float) -> float:
    """The longest gap between two published lists that overlaps [start, end]."""
    stamps = sorted(generated)
    return max(
        (b - a for a, b in pairwise(stamps) if b >= start and a <= end),
        default=float("nan"),
    )


def table(rebalances: Sequence[Rebalance], pauses: dict[str, float], assignor: str) -> str:
    rows = [
        f"rebalance times ({assignor}, {PARTITIONS} partitions, {RATE} events/s; the "
        "publish gap is the longest time without a new list around the rebalance)",
        f"{'step':<8}{'first move->last assign':>25}{'command->last assign':>22}"
        f"{'partitions moved':>18}{'longest unowned':>17}{'listener calls':>16}"
        f"{'longest publish gap':>21}",
    ]
    for r in rebalances:
        rows.append(
            f"{r.name:<8}{r.seconds:>24.2f}s{r.last_assign - r.command_at:>21.2f}s"
            f"{r.moved:>18}{r.longest_unowned:>16.2f}s{len(r.moves):>16}"
            f"{pauses[r.name]:>20.2f}s"
        )
    return "\n".join(rows)


def phase_table(phases: dict[str, tuple[float, float]], generated: Sequence[float]) -> str:
    rows = [f"{'phase':<16}{'seconds':>9}{'lists published':>17}{'longest publish gap':>21}"]
    for name, (start, end) in phases.items():
        start = max(start, min(generated, default=start))  # after the first worker's start-up
        published = sum(1 for ts in generated if start <= ts < end)
        pause = publishing_pause(generated, start, end)
        rows.append(f"{name:<16}{end - start:>8.1f}s{published:>17}{pause:>20.2f}s")
    return "\n".join(rows)


# -- the workers -------------------------------------------------------------------------------


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def processed(log: Path) -> float:
    """The worker's ``freshrec_events_processed_total`` (from its /metrics; -1 before it
    serves them)."""
    urls = [m["url"] for line in _lines(log) if (m := _METRICS_URL.search(line))]
    if not urls:
        return -1.0
    try:
        with urllib.request.urlopen(urls[-1], timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1.0
    m = _PROCESSED.search(text)
    return float(m["n"]) if m else -1.0


def _tails(logs: Sequence[Path], chars: int = 2500) -> str:
    return "\n".join(
        f"--- {log.name} ---\n{log.read_text()[-chars:]}" for log in logs if log.exists()
    )


def _wait(
    condition: Callable[[], bool], timeout_s: float, what: str, logs: Sequence[Path]
) -> float:
    assert wait_for(condition, timeout_s, 0.25), (
        f"not within {timeout_s:.0f}s: {what}\n{_tails(logs)}"
    )
    return time.time()


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("assignor", ["cooperative-sticky", "range"])
def test_scaling_1_to_3_to_1_under_load_keeps_one_owner_per_partition_and_every_users_state(
    bootstrap: str, prefix: str, encoder: CachedEncoder, tmp_path: Path, assignor: str
) -> None:
    topic = f"{prefix}events"
    items = synthetic_catalog(150, seed=11)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        ensure_topics(admin, WorkerConfig(topic_prefix=prefix, partitions=PARTITIONS))
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for it in items:
        producer.send(f"{prefix}items", key=it.item_id.encode(), value=encode_item(it))
    producer.flush()

    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    env = {
        "FRESHREC_PARTITIONS": str(PARTITIONS),
        "FRESHREC_ASSIGNOR": assignor,
        # start_worker's 25-event batches cap one worker near 200 events/s on an idle dev VM.
        "FRESHREC_BATCH_SIZE": "200",
        # The rebalance timeline below is read from the readable log lines.
        "FRESHREC_LOG_FORMAT": "text",
    }
    workers: list[subprocess.Popen[bytes]] = []
    stream = SteadyStream(producer, topic, items, RATE)
    everything = set(range(PARTITIONS))

    def owns(n: int) -> set[int]:
        return owned(moves_of(logs[n], n, topic))

    def settle(ns: Sequence[int], what: str) -> None:
        """Wait until each of ``ns`` has processed PROGRESS more events."""
        since = {n: max(0.0, processed(logs[n])) for n in ns}
        _wait(
            lambda: all(processed(logs[n]) >= since[n] + PROGRESS for n in ns),
            STARTUP_S,
            f"{what} process {PROGRESS} more events each",
            [logs[n] for n in ns],
        )

    try:
        # Phase 1: one worker. The stream starts once it is in the group, not to begin with a
        # backlog of its start-up.
        workers.append(start_worker(bootstrap, prefix, logs[0], env))
        _wait(lambda: owns(0) == everything, STARTUP_S, "worker 0 owns every partition", logs)
        t0 = stream.start()
        settle([0], "worker 0")

        # Phase 2: three workers, each owning some of the partitions, each processing.
        t1 = time.time()
        workers += [start_worker(bootstrap, prefix, logs[n], env) for n in (1, 2)]
        t2 = _wait(
            lambda: (
                all(owns(n) for n in range(3))
                and set().union(*(owns(n) for n in range(3))) == everything
            ),
            STARTUP_S,
            "each of the three workers owns partitions, and every partition is owned",
            logs,
        )
        settle([0, 1, 2], "the three workers")

        # Phase 3: back to one worker; the other two stop gracefully.
        t3 = time.time()
        for n in (1, 2):
            workers[n].send_signal(signal.SIGTERM)
        for n in (1, 2):
            assert workers[n].wait(timeout=120) == 0, _tails(logs)
        t4 = _wait(lambda: owns(0) == everything, 120, "worker 0 owns everything again", logs)
        settle([0], "worker 0 alone")
        t5 = stream.stop()

        _wait(lambda: all_committed(bootstrap, prefix), 300, "everything committed", logs[:1])
        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(timeout=120) == 0, _tails(logs[:1])
    finally:
        stream.close()
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=30)
        producer.close(timeout=10)

    # What the logs say: who owned what when, and how long each rebalance took.
    all_moves = {n: moves_of(logs[n], n, topic) for n in range(3)}
    intervals = [o for n in range(3) for o in ownerships(all_moves[n], n, last_line_at(logs[n]))]
    flat = sorted((m for ms in all_moves.values() for m in ms), key=lambda m: m.at)
    rebalances = [
        Rebalance("1 -> 3", t1, tuple(m for m in flat if t1 <= m.at < t3)),
        Rebalance("3 -> 1", t3, tuple(m for m in flat if t3 <= m.at <= t4)),
    ]
    recs = [decode_recommendation(r.value) for r in read_all(bootstrap, f"{prefix}recommendations")]
    generated = [msg["generated_ts"] / 1000.0 for msg in recs]
    pauses = {r.name: publishing_pause(generated, r.first, r.last_assign) for r in rebalances}
    phases = {"1 worker": (t0, t1), "3 workers": (t2, t3), "1 worker again": (t4, t5)}
    report = table(rebalances, pauses, assignor) + "\n" + phase_table(phases, generated)
    moves_text = "\n".join(f"worker{m.worker}: {m.line}" for m in flat)
    print("\n" + report + "\n" + moves_text)

    # (a) Never two owners of a partition at once.
    overlapping = double_owners(intervals)
    assert not overlapping, f"{overlapping}\n{report}\n{moves_text}"

    # (b) No user's state lost: the changelog is the fold of every event the topic holds.
    events = [decode_event(r.value) for r in read_all(bootstrap, topic, timeout_s=120)]
    assert len(events) == stream.sent, report
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events))

    # (c) Recommendations continue: each phase's events got lists, and lists were published
    # while the phase lasted.
    event_ts = [msg["event_ts"] / 1000.0 for msg in recs]
    for name, (start, end) in phases.items():
        assert any(start <= ts < end for ts in event_ts), f"no lists for {name}'s events\n{report}"
        assert any(start <= ts < end for ts in generated), f"nothing published in {name}\n{report}"

    # (d) Each rebalance was seen in the logs and measured.
    for r in rebalances:
        assert r.seconds >= 0, f"{r.name}: no assignment logged\n{report}\n{moves_text}"
