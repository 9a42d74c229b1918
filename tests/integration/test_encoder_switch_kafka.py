"""Switching the worker to a fine-tuned encoder by restarting it with a new ``--encoder-dir``,
on the real broker: every user comes back from the ``state.users`` changelog with history and
counts, their vectors in the new encoder's space, and lists carry the new model_version."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumer.app import KafkaWorker, build_worker
from consumer.changelog import decode_state
from consumer.codec import encode_event, encode_item
from consumer.config import WorkerConfig
from consumer.datasets import synthetic_catalog, synthetic_events
from consumer.finetuning import run_finetune
from consumer.topics import ensure_topics
from learner.finetune import FinetuneConfig
from learner.recommender import ModelConfig, Recommender
from learner.types import Event
from learner.user_state import UserSnapshot
from serving.codec import decode_recommendation
from tests.integration.helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def run_until(kw: KafkaWorker, n: int, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    kw.worker.run(until=lambda: kw.worker.totals.consumed >= n or time.monotonic() > deadline)
    assert kw.worker.totals.consumed >= n, f"consumed {kw.worker.totals.consumed} of {n}"


def changelog(bootstrap: str, topic: str) -> dict[str, UserSnapshot]:
    latest: dict[str, UserSnapshot] = {}
    for r in read_all(bootstrap, topic):
        snap = decode_state(r.value)
        latest[snap.user_id] = snap
    return latest


def send(producer: KafkaProducer, topic: str, events: list[Event]) -> None:
    for ev in events:
        producer.send(topic, key=ev.user_id.encode(), value=encode_event(ev))
    producer.flush()


def test_a_restart_with_a_finetuned_encoder_keeps_every_users_state(
    make_config: Callable[..., WorkerConfig],
    producer: KafkaProducer,
    bootstrap: str,
    tmp_path: Path,
) -> None:
    items = synthetic_catalog(40, seed=3)
    events = synthetic_events(240, items, n_users=8, seed=3)  # at most ~45 a user: all in rings
    first_part, second_part = events[:180], events[180:]
    tuned_dir = tmp_path / "tuned"
    run_finetune(
        out=tuned_dir,
        items=items,
        events=events,
        dataset="synthetic-test",
        encoder_dir=None,
        device="cpu",
        config=FinetuneConfig(layers=1, batch_size=8, max_steps=2, lr=1e-3),
    )
    # No per-item offsets: a vector is then a pure function of events and item embeddings.
    config = make_config(item_lr=0.0, partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        ensure_topics(admin, config)
    finally:
        admin.close()
    for it in items:
        producer.send(config.items_topic, key=it.item_id.encode(), value=encode_item(it))
    send(producer, config.events_topic, first_part)

    old = build_worker(config)  # the default encoder
    try:
        old.worker.bootstrap()
        run_until(old, len(first_part))
        encoder = old.worker.recommender.encoder
    finally:
        old.close()
    before = changelog(bootstrap, config.state_topic)
    assert {s.encoder for s in before.values()} == {encoder.name}

    send(producer, config.events_topic, second_part)
    # The restart with --encoder-dir naming the fine-tuned directory.
    new = build_worker(replace(config, encoder_dir=str(tuned_dir)))
    try:
        new.worker.bootstrap()
        run_until(new, len(second_part))
        tuned = new.worker.recommender.encoder
        rederived = new.worker.recommender.rederived_users
    finally:
        new.close()

    assert tuned.name != encoder.name and tuned.dim == encoder.dim
    assert rederived == len(before)
    after = changelog(bootstrap, config.state_topic)
    # The reference: every event folded in one process with the new encoder from the start.
    ref = Recommender(tuned, ModelConfig(train=False, cooc=False, trend_signal=False))
    ref.upsert_items(items)
    ref.learn(events)
    want = {s.user_id: s for s in ref.snapshot_users(list(after))}
    assert set(after) == {ev.user_id for ev in events}
    for user, snap in want.items():
        got = after[user]
        assert got.count == snap.count and got.history == snap.history, user
        assert got.encoder == tuned.name, user
        np.testing.assert_allclose(
            np.frombuffer(got.vector, "<f4"), np.frombuffer(snap.vector, "<f4"), atol=1e-4
        )

    # Per partition (in order): the old encoder's lists, then only the new one's.
    by_partition: dict[int, list[str]] = {}
    for r in read_all(bootstrap, config.recommendations_topic):
        version = str(decode_recommendation(r.value)["model_version"]).split("/")[0]
        by_partition.setdefault(r.partition, []).append(version)
    for versions in by_partition.values():
        switch = versions.index(tuned.name)
        assert set(versions[:switch]) == {encoder.name} and set(versions[switch:]) == {tuned.name}
