"""The ``freshrec worker`` process on the real broker: SIGTERM stops it cleanly, nothing is lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaProducer

from consumer.codec import encode_event, encode_item
from consumer.datasets import synthetic_catalog, synthetic_events
from serving.codec import decode_recommendation
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    read_all,
    topic_exists,
    wait_for,
)

pytestmark = pytest.mark.integration

SUMMARY = re.compile(r"consumed=(\d+) processed=(\d+) rejected=(\d+) published=(\d+)")


def _start_worker(bootstrap: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
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
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "worker"], env=env, stdout=out, stderr=out
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int, int, int]:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    found = SUMMARY.findall(log.read_text())
    assert found, log.read_text()[-3000:]
    consumed, processed, rejected, published = (int(x) for x in found[-1])
    return consumed, processed, rejected, published


def test_sigterm_mid_stream_then_restart_loses_nothing(
    bootstrap: str, prefix: str, producer: KafkaProducer, tmp_path: Path
) -> None:
    items = synthetic_catalog(150, seed=3)
    events = synthetic_events(3000, items, n_users=60, seed=3)
    first, second = events[:2000], events[2000:]
    bad = [b"\xc1 not msgpack", b"\x93\x01\x02\x03"]  # garbage, and a list instead of a map

    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
    worker = _start_worker(bootstrap, prefix, log1)
    try:
        # The worker creates the topics; wait for them before producing.
        assert wait_for(lambda: topic_exists(bootstrap, f"{prefix}events.dlq"), 120), log1
        for it in items:
            producer.send(f"{prefix}items", key=it.item_id.encode(), value=encode_item(it))
        for ev in first:
            producer.send(f"{prefix}events", key=ev.user_id.encode(), value=encode_event(ev))
        producer.flush()
        assert wait_for(
            lambda: len(read_all(bootstrap, f"{prefix}recommendations", timeout_s=5)) > 0, 120
        ), log1.read_text()[-3000:]
        run1 = _stop(worker, log1)
    finally:
        if worker.poll() is None:
            worker.kill()

    # More traffic arrives while no worker runs, bad records among it.
    for ev in second:
        producer.send(f"{prefix}events", key=ev.user_id.encode(), value=encode_event(ev))
    for n, value in enumerate(bad):
        producer.send(f"{prefix}events", key=f"bad-{n}".encode(), value=value)
    producer.flush()
    produced = len(events) + len(bad)
    assert run1[0] < produced

    worker = _start_worker(bootstrap, prefix, log2)
    try:
        group, topic = f"{prefix}workers", f"{prefix}events"
        assert wait_for(
            lambda: committed_offsets(bootstrap, group, topic) == end_offsets(bootstrap, topic),
            180,
            step_s=1.0,
        ), log2.read_text()[-3000:]
        run2 = _stop(worker, log2)
    finally:
        if worker.poll() is None:
            worker.kill()

    # Clean stops commit exactly what they processed: every record was handled once.
    assert run1[0] + run2[0] == produced
    assert run1[1] + run2[1] == len(events)
    assert run1[2] + run2[2] == len(bad)
    letters = read_all(bootstrap, f"{prefix}events.dlq")
    assert sorted(letter.value for letter in letters) == sorted(bad)

    # Every event after the restart took effect: each user's last list excludes those items.
    # (That user state itself survives restarts is test_state_recovery.py's subject.)
    touched: dict[str, set[str]] = defaultdict(set)
    for ev in second:
        touched[ev.user_id].add(ev.item_id)
    last: dict[str, set[str]] = {}
    for r in read_all(bootstrap, f"{prefix}recommendations"):
        msg = decode_recommendation(r.value)
        last[msg["user_id"]] = {it["item_id"] for it in msg["items"]}
    assert set(last) == {ev.user_id for ev in events}
    for user, listed in last.items():
        assert not listed & touched[user], user
