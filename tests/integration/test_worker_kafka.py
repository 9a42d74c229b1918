"""The worker end to end on the real broker: ml-100k in, contract-conforming lists out."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from kafka import KafkaProducer

from consumer.app import KafkaWorker
from consumer.codec import encode_event, encode_item
from consumer.config import WorkerConfig
from consumer.datasets import load_ml100k
from consumer.model_sync import decode_snapshot
from learner.types import Event, Item
from serving.codec import decode_recommendation
from tests.integration.helpers import committed_offsets, end_offsets, read_all

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


def _send_items(producer: KafkaProducer, config: WorkerConfig, items: list[Item]) -> None:
    for it in items:
        producer.send(config.items_topic, key=it.item_id.encode(), value=encode_item(it))
    producer.flush()


def _send_events(producer: KafkaProducer, config: WorkerConfig, events: list[Event]) -> None:
    for ev in events:
        producer.send(config.events_topic, key=ev.user_id.encode(), value=encode_event(ev))
    producer.flush()


def _run_until_consumed(kw: KafkaWorker, n: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    kw.worker.run(until=lambda: kw.worker.totals.consumed >= n or time.monotonic() > deadline)
    assert kw.worker.totals.consumed >= n, f"consumed {kw.worker.totals.consumed} of {n}"


def test_ml100k_events_produce_contract_lists_for_exactly_those_users(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    items, events = load_ml100k()
    chosen = sorted({ev.user_id for ev in events[:3000]})[:25]
    mine = [ev for ev in events if ev.user_id in chosen][:1500]
    kw = make_worker(top_k=10)
    config = kw.config
    _send_items(producer, config, items)
    _send_events(producer, config, mine)
    kw.worker.bootstrap()
    _run_until_consumed(kw, len(mine))

    records = read_all(bootstrap, config.recommendations_topic)
    by_user: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in records:
        msg = decode_recommendation(r.value)
        assert r.key == str(msg["user_id"]).encode()
        by_user[str(msg["user_id"])].append(msg)
    assert set(by_user) == {ev.user_id for ev in mine}

    consumed: dict[str, set[str]] = defaultdict(set)
    for ev in mine:
        consumed[ev.user_id].add(ev.item_id)
    catalog = {it.item_id for it in items}
    for user, msgs in by_user.items():
        for msg in msgs:
            assert set(msg) == {
                "v",
                "user_id",
                "items",
                "strategy",
                "model_version",
                "event_ts",
                "generated_ts",
            }
            assert msg["v"] == 1 and msg["strategy"] in {"personal", "popular", "blend"}
            assert isinstance(msg["model_version"], str) and isinstance(msg["event_ts"], int)
            assert isinstance(msg["generated_ts"], int) and msg["generated_ts"] >= NOW_MS
            listed = msg["items"]
            assert isinstance(listed, list) and len(listed) == 10
            for it in listed:
                assert set(it) == {"item_id", "score", "because"}
                assert it["item_id"] in catalog and isinstance(it["score"], float)
                assert it["because"] is None or it["because"] in consumed[user]
        # After the last batch every one of the user's events is known: none is recommended.
        final = {it["item_id"] for it in msgs[-1]["items"]}  # type: ignore[index]
        assert not final & consumed[user]
    assert committed_offsets(bootstrap, config.group_id, config.events_topic) == end_offsets(
        bootstrap, config.events_topic
    )


def test_bad_records_land_in_dlq_with_reasons_while_good_ones_are_processed(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker()
    config = kw.config
    _send_items(producer, config, [Item(f"i{n}", f"Item number {n}") for n in range(5)])

    def event(n: int, **override: object) -> bytes:
        body = {
            "v": 1,
            "event_id": f"e{n}",
            "user_id": "u1",
            "item_id": f"i{n % 5}",
            "type": "click",
            "value": None,
            "ts": NOW_MS,
        }
        body.update(override)
        body = {k: v for k, v in body.items() if v is not ...}
        return bytes(msgpack.packb(body))

    bad = {
        b"not-msgpack": (b"\xc1\xc1\xc1", "not_msgpack"),
        b"not-a-map": (msgpack.packb([1, 2, 3]), "not_a_map"),
        b"wrong-type": (event(100, user_id=42), "wrong_type"),
        b"huge-id": (event(101, user_id="u" * 10_000), "bad_id"),
        b"nan": (event(102, value=float("nan")), "non_finite_value"),
        b"unknown-type": (event(103, type="teleport"), "unknown_type"),
        b"missing-ts": (event(104, ts=...), "missing_field"),
    }
    good = 0
    for n in range(10):
        producer.send(config.events_topic, key=b"u1", value=event(n), partition=0)
        good += 1
        if n < len(bad):
            key = list(bad)[n]
            producer.send(config.events_topic, key=key, value=bad[key][0], partition=0)
    producer.flush()
    kw.worker.bootstrap()
    _run_until_consumed(kw, good + len(bad))

    assert kw.worker.totals.processed == good
    assert kw.worker.totals.rejected == len(bad)
    letters = read_all(bootstrap, config.dlq_topic)
    assert len(letters) == len(bad)
    for letter in letters:
        headers = dict(letter.headers)
        original, reason = bad[letter.key]
        assert letter.value == original  # byte for byte
        assert headers["freshrec.error"].decode() == reason
        assert headers["freshrec.error.detail"]  # says what exactly was wrong
        topic, partition, offset = headers["freshrec.source"].decode().rsplit(":", 2)
        assert topic == config.events_topic and partition == "0" and int(offset) >= 0
    registry = kw.worker.metrics.registry
    for _, reason in bad.values():
        sample = registry.get_sample_value("freshrec_events_rejected_total", {"reason": reason})
        assert sample == 1.0, reason
    assert registry.get_sample_value("freshrec_events_processed_total") == good


def test_item_tombstone_removes_item_from_later_recommendations(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker(min_events=1)
    config = kw.config
    titles = [
        "Space station",
        "Rocket launch",
        "Moon landing",
        "Mars rover",
        "Deep space probe",
        "Baking bread",
        "Pasta recipes",
        "Garden roses",
    ]
    _send_items(producer, config, [Item(f"i{n}", t) for n, t in enumerate(titles)])
    kw.worker.bootstrap()
    _send_events(producer, config, [Event("e0", "u1", "i0", "click", None, NOW_MS)])
    _run_until_consumed(kw, 1)
    first = kw.worker.recommender.recommend(["u1"], k=3)[0]
    victim = first.items[0].item_id

    producer.send(config.items_topic, key=victim.encode(), value=None)
    producer.flush()
    # Topics are not ordered with each other: wait (bounded) until the feed delivered it.
    deadline = time.monotonic() + 30
    kw.worker.run(
        until=lambda: victim not in kw.worker.recommender.items or time.monotonic() > deadline
    )
    assert victim not in kw.worker.recommender.items
    other = next(it for it in ("i1", "i2") if it != victim)
    _send_events(producer, config, [Event("e1", "u1", other, "click", None, NOW_MS + 1)])
    _run_until_consumed(kw, 2)

    lists = [
        decode_recommendation(r.value) for r in read_all(bootstrap, config.recommendations_topic)
    ]
    assert victim in {it["item_id"] for it in lists[0]["items"]}
    assert len(lists) == 2
    assert victim not in {it["item_id"] for it in lists[-1]["items"]}


def test_brand_new_untouched_item_is_recommended_to_a_textually_close_user(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker(min_events=3, top_k=5)
    config = kw.config
    space = [
        "Apollo 13 (1995). genres: Drama, Space",
        "Armageddon: asteroid mission",
        "Gravity: astronauts stranded in orbit",
        "The Martian: stranded on Mars",
        "Interstellar: a voyage through a wormhole",
        "Contact: signals from space",
        "First Man: Neil Armstrong and the Moon landing",
    ]
    other = [
        "Pride and Prejudice (2005). genres: Romance",
        "Julie & Julia: a cooking romance",
        "The Notebook: a summer love story",
        "Chef: a food truck comedy",
        "Ratatouille: a rat who cooks in Paris",
        "Amelie: romance in Montmartre",
        "Notting Hill: a bookseller falls in love",
        "Big Night: an Italian restaurant",
        "Sleepless in Seattle: romance on the radio",
        "Babette's Feast: a French dinner",
    ]
    catalog = [Item(f"s{n}", t) for n, t in enumerate(space)]
    catalog += [Item(f"o{n}", t) for n, t in enumerate(other)]
    _send_items(producer, config, catalog)
    kw.worker.bootstrap()
    # Others make the romance and cooking films popular; u1 watches space films only.
    history = [
        Event(f"p{n}", f"fan{n % 7}", f"o{n % 10}", "purchase", None, NOW_MS + n) for n in range(60)
    ]
    history += [Event(f"u{n}", "u1", f"s{n}", "click", None, NOW_MS + 100 + n) for n in range(4)]
    _send_events(producer, config, history)
    _run_until_consumed(kw, len(history))

    new = Item("new-1", "Ad Astra: an astronaut travels to Neptune across the solar system")
    _send_items(producer, config, [new])
    # Topics are not ordered with each other: wait (bounded) until the feed delivered it.
    deadline = time.monotonic() + 30
    kw.worker.run(
        until=lambda: "new-1" in kw.worker.recommender.items or time.monotonic() > deadline
    )
    assert "new-1" in kw.worker.recommender.items
    _send_events(producer, config, [Event("u9", "u1", "s4", "click", None, NOW_MS + 200)])
    _run_until_consumed(kw, len(history) + 1)

    last = [
        decode_recommendation(r.value)
        for r in read_all(bootstrap, config.recommendations_topic)
        if r.key == b"u1"
    ][-1]
    assert last["strategy"] == "personal"
    assert "new-1" in [it["item_id"] for it in last["items"]]


def test_a_new_worker_starts_from_the_shared_head_another_worker_published(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    """DESIGN §5: head snapshots on the compacted model topic; a new worker starts from them."""
    items, events = load_ml100k()
    first = make_worker(model_sync_s=0.2)
    config = first.config
    _send_items(producer, config, items)
    _send_events(producer, config, events[:1000])
    first.worker.bootstrap()
    _run_until_consumed(first, 1000)
    assert first.worker.recommender.head.steps > 0  # it learned: its head left the start
    time.sleep(0.3)  # past the sync interval: the next step publishes
    first.worker.step()
    snapshots = [r for r in read_all(bootstrap, config.model_topic) if r.value is not None]
    assert snapshots, "no head snapshot on the model topic"
    published = decode_snapshot(snapshots[-1].value)

    second = make_worker(model_sync_s=0.2)
    second.worker.bootstrap()
    head = second.worker.recommender.head
    assert second.worker.metrics.registry.get_sample_value("freshrec_model_peers") == 1
    for name, value in head.shared_state().items():
        np.testing.assert_array_equal(value, published.params[name])
