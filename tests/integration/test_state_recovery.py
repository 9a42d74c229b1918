"""User state survives workers that die: ``kill -9`` mid-stream, then a restart that restores
every user from the ``state.users`` changelog (issue 5, tests 1 and 5), on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumer.changelog import decode_state
from consumer.codec import encode_event, encode_item
from consumer.config import WorkerConfig
from consumer.datasets import synthetic_catalog, synthetic_events
from consumer.topics import ensure_topics
from learner.encoder import CachedEncoder
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, Item
from learner.user_state import UserSnapshot
from tests.integration.helpers import committed_offsets, end_offsets, read_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(600)]


def start_worker(
    bootstrap: str, prefix: str, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # ``extra_env`` overrides the settings below (a dict() call with both would refuse).
    env = dict(
        os.environ,
        FRESHREC_BOOTSTRAP_SERVERS=bootstrap,
        FRESHREC_TOPIC_PREFIX=prefix,
        FRESHREC_GROUP_ID=f"{prefix}workers",
        FRESHREC_PARTITIONS="3",
        FRESHREC_BATCH_SIZE="25",
        FRESHREC_POLL_TIMEOUT_MS="200",
        FRESHREC_METRICS_PORT="0",
        FRESHREC_DEVICE="cpu",
        # No per-item offsets: a user's vector is then a pure function of their events (the
        # item embeddings, weights and times), which the reference fold below recomputes.
        FRESHREC_ITEM_LR="0",
    )
    env.update(extra_env or {})
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "worker"], env=env, stdout=out, stderr=out
        )


def prepare(bootstrap: str, prefix: str, producer: KafkaProducer, items: list[Item]) -> None:
    """The run's topics (3 event partitions) and its whole catalog, before any worker starts."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        ensure_topics(admin, WorkerConfig(topic_prefix=prefix, partitions=3))
    finally:
        admin.close()
    for it in items:
        producer.send(f"{prefix}items", key=it.item_id.encode(), value=encode_item(it))
    producer.flush()


def send(producer: KafkaProducer, prefix: str, events: list[Event]) -> None:
    for ev in events:
        producer.send(f"{prefix}events", key=ev.user_id.encode(), value=encode_event(ev))
    producer.flush()


def all_committed(bootstrap: str, prefix: str) -> bool:
    topic = f"{prefix}events"
    return committed_offsets(bootstrap, f"{prefix}workers", topic) == end_offsets(bootstrap, topic)


def changelog(bootstrap: str, prefix: str) -> dict[str, UserSnapshot]:
    """The latest state record of every user."""
    latest: dict[str, UserSnapshot] = {}
    for r in read_all(bootstrap, f"{prefix}state.users", isolation_level="read_committed"):
        snap = decode_state(r.value)
        latest[snap.user_id] = snap
    return latest


def reference(encoder: CachedEncoder, items: list, events: list[Event]) -> dict[str, UserSnapshot]:
    """Every user's state folded from their events in order, in one process, no training."""
    rec = Recommender(encoder, ModelConfig(train=False, cooc=False, trend_signal=False))
    rec.upsert_items(items)
    rec.learn(events)
    return {s.user_id: s for s in rec.snapshot_users([ev.user_id for ev in events])}


def assert_same_state(got: dict[str, UserSnapshot], want: dict[str, UserSnapshot]) -> None:
    assert set(got) == set(want)
    for user, snap in want.items():
        mine = got[user]
        assert mine.count == snap.count, user  # nothing lost, nothing folded twice
        assert mine.last_ts_ms == snap.last_ts_ms, user
        assert [h[0] for h in mine.history] == [h[0] for h in snap.history], user
        assert set(mine.consumed) == set(snap.consumed), user
        np.testing.assert_allclose(
            np.frombuffer(mine.vector, "<f4"), np.frombuffer(snap.vector, "<f4"), atol=1e-4
        )


def test_kill_9_mid_stream_then_restarts_keep_every_users_state(
    bootstrap: str, prefix: str, producer: KafkaProducer, encoder: CachedEncoder, tmp_path: Path
) -> None:
    items = synthetic_catalog(150, seed=5)
    events = synthetic_events(3000, items, n_users=60, seed=5)
    later = synthetic_events(60, items, n_users=60, seed=6, start_ts_ms=events[-1].ts + 1000)

    # The catalog is in place before the first worker starts, so it loads it whole first.
    prepare(bootstrap, prefix, producer, items)

    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    worker = start_worker(bootstrap, prefix, logs[0])
    try:
        send(producer, prefix, events)
        group, topic = f"{prefix}workers", f"{prefix}events"
        assert wait_for(
            lambda: (
                sum(max(0, o) for o in committed_offsets(bootstrap, group, topic).values()) >= 600
            ),
            180,
            step_s=0.05,
        ), _tail(logs[0])
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    done_at_kill = sum(committed_offsets(bootstrap, group, topic).values())
    assert done_at_kill < len(events), "the worker finished before it was killed"

    # A new worker restores the users from the changelog and carries on where the group left.
    worker = start_worker(bootstrap, prefix, logs[1])
    try:
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), _tail(logs[1])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, _tail(logs[1])
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "users restored" in logs[1].read_text()
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events))

    # Another restart, with nothing in memory, and one more event per user: each new state is
    # the restored state with that event folded in. This worker keeps at most 20 of the 60
    # users in memory: the others wait in its local store and come back on their next event.
    send(producer, prefix, later)
    worker = start_worker(bootstrap, prefix, logs[2], {"FRESHREC_MAX_USERS_IN_MEMORY": "20"})
    try:
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), _tail(logs[2])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, _tail(logs[2])
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "users beyond 20 in memory" in logs[2].read_text()
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events + later))
    by_user: dict[str, int] = defaultdict(int)
    for ev in events + later:
        by_user[ev.user_id] += 1
    assert {u: s.count for u, s in changelog(bootstrap, prefix).items()} == by_user


def _tail(log: Path) -> str:
    return log.read_text()[-3000:] if log.exists() else "(no log)"
