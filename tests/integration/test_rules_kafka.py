"""Business rules and diversity from a config file, on the real broker: a worker built from
the file publishes only lists that obey its [rules] table."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from consumer.app import build_worker
from consumer.codec import encode_event, encode_item
from consumer.config import WorkerConfig, config_from_args
from consumer.config_file import read_rules
from learner.types import Event, Item
from serving.codec import decode_recommendation
from tests.integration.helpers import read_all

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
GENRES = ["Drama", "Comedy", "Horror", "War"]
# 16 short titles; item i<n> has genre GENRES[n % 4] (and War as well when n % 5 == 0).
TITLES = [
    "space", "war", "love", "paris", "robot", "ship", "kiss", "rain",
    "star", "alien", "cook", "food", "horse", "desert", "music", "dance",
]  # fmt: skip
ITEMS = [
    Item(
        f"i{n}",
        f"The {word} story",
        attributes={"genres": sorted({GENRES[n % 4]} | ({"War"} if n % 5 == 0 else set()))},
    )
    for n, word in enumerate(TITLES)
]
GENRES_OF = {it.item_id: set(it.attributes["genres"]) for it in ITEMS}  # type: ignore[arg-type]

CONFIG = """top_k = 5
diversity = 0.3
rerank_pool = 8
state_changelog = false
model_sync_s = 0

[rules]
exclude_items = ["i1"]

[rules.exclude_values]
genres = ["Horror"]

[rules.max_per_value]
genres = 3
"""


def test_a_worker_built_from_a_config_file_publishes_lists_that_obey_its_rules(
    bootstrap: str, prefix: str, producer: KafkaProducer, tmp_path: Path
) -> None:
    path = tmp_path / "freshrec.toml"
    path.write_text(CONFIG, encoding="utf-8")
    flags = argparse.Namespace(
        config=str(path),
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        group_id=f"{prefix}workers",
        partitions=2,
        poll_timeout_ms=200,
        metrics_port=0,
        device="cpu",
    )
    config: WorkerConfig = config_from_args(flags, {})
    assert (config.top_k, config.diversity) == (5, 0.3)
    kw = build_worker(config, rules=read_rules(path))
    try:
        for it in ITEMS:
            producer.send(config.items_topic, key=it.item_id.encode(), value=encode_item(it))
        events = [
            Event(f"e{n}", f"u{n % 3}", f"i{(3 * n) % 16}", "click", None, NOW_MS + n)
            for n in range(12)
        ]
        for ev in events:
            producer.send(config.events_topic, key=ev.user_id.encode(), value=encode_event(ev))
        producer.flush()
        kw.worker.bootstrap()
        deadline = time.monotonic() + 120
        kw.worker.run(
            until=lambda: kw.worker.totals.consumed >= len(events) or time.monotonic() > deadline
        )
        assert kw.worker.totals.consumed == len(events)
    finally:
        kw.close()

    lists = [
        decode_recommendation(r.value) for r in read_all(bootstrap, config.recommendations_topic)
    ]
    assert {rec["user_id"] for rec in lists} == {"u0", "u1", "u2"}
    for rec in lists:
        got = [it["item_id"] for it in rec["items"]]
        # Each user has at least 8 items that are not consumed, excluded or Horror; whatever
        # the greedy order, 3 per genre leaves room for 5 of them, so every list is full.
        assert len(got) == 5, got
        assert "i1" not in got
        assert all("Horror" not in GENRES_OF[i] for i in got), got
        assert max(Counter(g for i in got for g in GENRES_OF[i]).values()) <= 3, got
