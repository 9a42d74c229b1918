"""``--guarantee exactly-once`` on the real broker (issue 5, tests 2 and 4): a worker killed with
``kill -9`` mid-stream, and a zombie (a worker frozen past its session timeout while a
replacement takes over, then resumed). A ``read_committed`` reader must see each event's effect
exactly once: every user's committed lists carry strictly increasing ``event_ts`` (a batch
published twice would repeat one) ending at the user's newest event, and the committed state
changelog equals a fold of exactly each user's events."""

from __future__ import annotations

import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaProducer

from consumer.datasets import synthetic_catalog, synthetic_events
from learner.encoder import CachedEncoder
from learner.types import Event
from serving.codec import decode_recommendation
from tests.integration.helpers import committed_offsets, read_topic, wait_for
from tests.integration.test_state_recovery import (
    all_committed,
    assert_same_state,
    changelog,
    prepare,
    reference,
    send,
    start_worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(600)]

EXACTLY_ONCE = {
    "FRESHREC_GUARANTEE": "exactly-once",
    # A dead worker's open transaction holds back read_committed readers (and the restore of
    # its partitions) until the broker aborts it.
    "FRESHREC_TRANSACTION_TIMEOUT_MS": "5000",
}


def processed(bootstrap: str, prefix: str) -> int:
    offsets = committed_offsets(bootstrap, f"{prefix}workers", f"{prefix}events")
    return sum(max(0, o) for o in offsets.values())


def assert_each_effect_once(bootstrap: str, prefix: str, events: list[Event]) -> None:
    committed = read_topic(
        bootstrap, f"{prefix}recommendations", isolation_level="read_committed", timeout_s=60
    )
    seen: dict[str, list[int]] = defaultdict(list)
    for r in committed:
        msg = decode_recommendation(r.value)
        seen[msg["user_id"]].append(msg["event_ts"])
    newest: dict[str, int] = {}
    for ev in events:
        newest[ev.user_id] = max(newest.get(ev.user_id, 0), ev.ts)
    assert set(seen) == set(newest)
    for user, stamps in seen.items():
        assert stamps == sorted(set(stamps)), f"{user}: a batch's lists committed twice"
        assert stamps[-1] == newest[user], user


def stop(worker: subprocess.Popen[bytes], log: Path) -> None:
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_kill_9_mid_stream_commits_each_events_effect_once(
    bootstrap: str, prefix: str, producer: KafkaProducer, encoder: CachedEncoder, tmp_path: Path
) -> None:
    items = synthetic_catalog(150, seed=7)
    events = synthetic_events(3000, items, n_users=60, seed=7)
    prepare(bootstrap, prefix, producer, items)
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]

    worker = start_worker(bootstrap, prefix, logs[0], EXACTLY_ONCE)
    try:
        send(producer, prefix, events)
        assert wait_for(lambda: processed(bootstrap, prefix) >= 600, 180, 0.05), logs[0]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert processed(bootstrap, prefix) < len(events), "the worker finished before it was killed"

    worker = start_worker(bootstrap, prefix, logs[1], EXACTLY_ONCE)
    try:
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), logs[1].read_text()
        stop(worker, logs[1])
    finally:
        if worker.poll() is None:
            worker.kill()
    assert_each_effect_once(bootstrap, prefix, events)
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events))


def test_a_zombie_resumed_after_its_replacement_took_over_commits_nothing_twice(
    bootstrap: str, prefix: str, producer: KafkaProducer, encoder: CachedEncoder, tmp_path: Path
) -> None:
    items = synthetic_catalog(150, seed=8)
    events = synthetic_events(3000, items, n_users=60, seed=8)
    prepare(bootstrap, prefix, producer, items)
    logs = [tmp_path / "zombie.log", tmp_path / "replacement.log"]

    zombie = start_worker(bootstrap, prefix, logs[0], EXACTLY_ONCE)
    replacement = None
    try:
        send(producer, prefix, events)
        assert wait_for(lambda: processed(bootstrap, prefix) >= 300, 180, 0.05), logs[0]
        zombie.send_signal(signal.SIGSTOP)  # frozen mid-stream, heartbeats and all
        frozen_at = processed(bootstrap, prefix)
        assert frozen_at < len(events)

        replacement = start_worker(bootstrap, prefix, logs[1], EXACTLY_ONCE)
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), logs[1].read_text()

        before = len(logs[0].read_text())
        zombie.send_signal(signal.SIGCONT)
        # The zombie wakes up to find its group generation and transaction gone: whatever it
        # had in hand is rolled back, and it rejoins the group, with nothing left to do.
        assert wait_for(lambda: "partitions assigned" in logs[0].read_text()[before:], 120, 0.5), (
            logs[0].read_text()[before:][-3000:]
        )
        stop(replacement, logs[1])
        stop(zombie, logs[0])
    finally:
        for proc in (zombie, replacement):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    assert_each_effect_once(bootstrap, prefix, events)
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events))
