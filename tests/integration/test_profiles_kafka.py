"""Profiles on the real broker: the worker reads the compacted users topic at start and keeps
up with it, bad profile records are dead-lettered, and a restarted worker has them again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import msgpack
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from consumer.app import KafkaWorker
from consumer.codec import decode_user, encode_event, encode_item, encode_user
from consumer.config import WorkerConfig
from consumer.topics import topic_specs
from learner.types import Event, Item, UserProfile
from serving.codec import decode_recommendation
from tests.integration.helpers import read_all, read_topic

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
ITEMS = [
    Item("kids", "Toy Story (1995)", attributes={"genres": ["Animation", "Children's"]}),
    Item("noir", "The Maltese Falcon (1941)", attributes={"genres": ["Film-Noir", "Mystery"]}),
    Item("war", "Saving Private Ryan (1998)", attributes={"genres": ["Action", "War"]}),
]
STUDENT = UserProfile("u1", {"age": 19, "gender": "M", "occupation": "student", "zip": "55414"})
RETIRED = UserProfile("u2", {"age": 71, "gender": "F", "occupation": "retired", "zip": "02139"})


def test_worker_reads_profiles_from_the_users_topic_and_gets_them_back_after_a_restart(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker()
    config = kw.config
    for it in ITEMS:
        producer.send(config.items_topic, key=it.item_id.encode(), value=encode_item(it))
    bad = bytes(msgpack.packb({"v": 1, "user_id": "u3", "attributes": "old", "ts": NOW_MS}))
    producer.send(config.users_topic, key=b"u1", value=encode_user(STUDENT))
    producer.send(config.users_topic, key=b"u2", value=encode_user(RETIRED))
    producer.send(config.users_topic, key=b"u3", value=bad)
    producer.flush()

    kw.worker.bootstrap()
    rec = kw.worker.recommender
    assert "u1" in rec.profiles and "u2" in rec.profiles and len(rec.profiles) == 2
    [letter] = read_topic(bootstrap, config.dlq_topic, until=lambda rs: len(rs) >= 1)
    headers = dict(letter.headers)
    assert headers["freshrec.error"] == b"wrong_type"
    assert headers["freshrec.source"].decode().startswith(f"{config.users_topic}:")
    assert letter.value == bad

    # While running: a tombstone removes u2's profile; a new profile and u4's first event.
    producer.send(config.users_topic, key=b"u2", value=None)
    producer.send(config.users_topic, key=b"u4", value=encode_user(replace(STUDENT, user_id="u4")))
    producer.send(
        config.events_topic,
        key=b"u4",
        value=encode_event(Event("e1", "u4", "war", "click", None, NOW_MS)),
    )
    producer.flush()
    deadline = time.monotonic() + 60

    def done() -> bool:
        # The users topic and the events topic are separate fetches: either may come first.
        profiles_seen = "u2" not in rec.profiles and "u4" in rec.profiles
        return (kw.worker.totals.consumed >= 1 and profiles_seen) or time.monotonic() > deadline

    kw.worker.run(until=done)
    assert kw.worker.totals.processed == 1
    assert "u2" not in rec.profiles and "u4" in rec.profiles
    [out] = read_all(bootstrap, config.recommendations_topic)
    assert decode_recommendation(out.value)["user_id"] == "u4"

    # A new worker (as after a restart) reads the compacted topic again: the profiles are back.
    again = make_worker()
    again.worker.bootstrap()
    profiles = again.worker.recommender.profiles
    assert len(profiles) == 2
    assert "u1" in profiles and "u4" in profiles and "u2" not in profiles
    assert profiles.text_of("u1") == profiles.text_of("u4")


def test_replay_users_only_publishes_ml100k_profiles_keyed_by_user(
    bootstrap: str, prefix: str
) -> None:
    from consumer.cli import main

    common = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main(["topics", "create", *common, "--partitions", "2"]) == 0
    assert main(["replay", "--dataset", "ml-100k", "--users-only", "--no-progress", *common]) == 0
    records = read_all(bootstrap, f"{prefix}users")
    assert len(records) == 943  # ml-100k's users, once each
    first = decode_user(records[0].key, records[0].value)
    assert isinstance(first, UserProfile) and records[0].key == first.user_id.encode()
    assert set(first.attributes) == {"age", "gender", "occupation", "zip"}
    assert not read_all(bootstrap, f"{prefix}events")  # --users-only: no events, no items
    assert not read_all(bootstrap, f"{prefix}items")


def test_a_cluster_without_the_users_topic_runs_without_profiles_and_says_so(
    make_worker: Callable[..., KafkaWorker],
    make_config: Callable[..., WorkerConfig],
    bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Topics made before profiles existed: everything but the users topic.
    config = make_config()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        specs = topic_specs(config)
        del specs[config.users_topic]
        admin.create_topics(
            [NewTopic(name, n, 1, topic_configs=c) for name, (n, c) in specs.items()]
        )
    finally:
        admin.close()
    kw = make_worker(create_topics=False)
    assert kw.user_feed is None and kw.worker.profiles is None
    assert f"topic {config.users_topic} does not exist: no user profiles" in caplog.text
    kw.worker.bootstrap()  # and it starts
