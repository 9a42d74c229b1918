"""Poison input on the real broker (issue 5, test 7): a ``freshrec worker`` process fed the whole
poison corpus among valid events stays up, accounts for every record, and dead-letters exactly
the bad ones, byte for byte, each with its reason and origin.

Three inputs used to stop the worker outside the codec (the dead-letter producer and topic
were sized by --max-event-bytes, and kafka-python cannot send a record with neither key nor
value); each has its own test here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumer.app import KafkaWorker
from consumer.codec import Limits, encode_event, encode_item
from consumer.config import WorkerConfig
from consumer.dlq import NULL_KEY_HEADER
from consumer.source import Record
from consumer.topics import ensure_topics
from learner.types import Event, Item
from tests.fixtures.poison import PoisonCase, poison_corpus
from tests.integration.helpers import metrics_url, read_topic, scrape, wait_for

pytestmark = pytest.mark.integration

# Lowered from 1 MiB so that records over it still fit the broker's own 1 MiB limit.
MAX_EVENT_BYTES = 256 << 10
SUMMARY = re.compile(r"consumed=(\d+) processed=(\d+) rejected=(\d+) published=(\d+)")
KNOWN_CRASHES = {
    "null_key_and_value",  # kafka-python cannot produce it; see test_a_record_without_...
}

Source = tuple[int, int]  # (partition, offset) of a produced record


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str


def _limits(config: WorkerConfig) -> Limits:
    """The limits a worker with ``config`` enforces."""
    return Limits(config.max_event_bytes, config.max_id_bytes, config.max_future_ms)


def _start_worker(config: WorkerConfig, log: Path) -> subprocess.Popen[bytes]:
    """``freshrec worker`` as its own process, configured like ``config`` through the env."""
    env = dict(
        os.environ,
        FRESHREC_BOOTSTRAP_SERVERS=config.bootstrap_servers,
        FRESHREC_TOPIC_PREFIX=config.topic_prefix,
        FRESHREC_GROUP_ID=config.group_id,
        FRESHREC_PARTITIONS=str(config.partitions),
        FRESHREC_BATCH_SIZE="25",
        FRESHREC_POLL_TIMEOUT_MS="200",
        FRESHREC_METRICS_PORT="0",
        FRESHREC_DEVICE="cpu",
        FRESHREC_MAX_EVENT_BYTES=str(config.max_event_bytes),
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "worker"], env=env, stdout=out, stderr=out
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _rejected_by_reason(metrics: dict[str, float]) -> dict[str, float]:
    """``freshrec_events_rejected_total`` per reason, the reasons that counted any."""
    prefix = 'freshrec_events_rejected_total{reason="'
    return {
        name[len(prefix) : -2]: value
        for name, value in metrics.items()
        if name.startswith(prefix) and value
    }


def _produce(producer: KafkaProducer, topic: str, key: bytes | None, value: bytes | None) -> Source:
    metadata = producer.send(topic, key=key, value=value).get(timeout=30)
    return metadata.partition, metadata.offset


def _produce_interleaved(
    producer: KafkaProducer, topic: str, cases: list[PoisonCase], good: list[Event]
) -> dict[Source, PoisonCase | Event]:
    """Every case, with a valid event after every third, in order; where each one landed."""
    stream: list[PoisonCase | Event] = []
    remaining = list(good)
    for n, case in enumerate(cases):
        stream.append(case)
        if n % 3 == 2 and remaining:
            stream.append(remaining.pop())
    stream.extend(remaining)
    sent: dict[Source, PoisonCase | Event] = {}
    for record in stream:
        if isinstance(record, Event):
            sent[_produce(producer, topic, record.user_id.encode(), encode_event(record))] = record
        else:
            sent[_produce(producer, topic, record.key, record.value)] = record
    return sent


def _dead_letters(bootstrap: str, config: WorkerConfig, expected: int) -> dict[Source, DeadLetter]:
    """The DLQ topic's records by the events-topic record each names in ``freshrec.source``."""
    out: dict[Source, DeadLetter] = {}
    for letter in read_topic(bootstrap, config.dlq_topic, until=lambda rs: len(rs) >= expected):
        headers = dict(letter.headers)
        topic, partition, offset = headers["freshrec.source"].decode().rsplit(":", 2)
        assert topic == config.events_topic
        source = (int(partition), int(offset))
        assert source not in out, f"dead-lettered twice: {source}"
        out[source] = DeadLetter(letter.key, letter.value, headers["freshrec.error"].decode())
    return out


def _stop(worker: subprocess.Popen[bytes], log: Path) -> tuple[int, ...]:
    """SIGTERM, a clean exit, and the totals of its last log line."""
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, _tail(log)
    found = SUMMARY.findall(log.read_text())
    assert found, _tail(log)
    return tuple(int(x) for x in found[-1])


def test_worker_fed_the_poison_corpus_stays_up_and_dead_letters_exactly_the_bad_records(
    make_config: Callable[..., WorkerConfig],
    bootstrap: str,
    producer: KafkaProducer,
    tmp_path: Path,
) -> None:
    config = make_config(max_event_bytes=MAX_EVENT_BYTES)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        ensure_topics(admin, config)  # before the worker starts, so it loads the catalog first
    finally:
        admin.close()
    catalog = [Item(f"poison-item-{n}", f"Poison item number {n}") for n in range(5)]
    for item in catalog:
        _produce(producer, config.items_topic, item.item_id.encode(), encode_item(item))
    now_ms = int(time.time() * 1000)
    corpus = poison_corpus(now_ms=now_ms, item_id=catalog[0].item_id, limits=_limits(config))
    cases = [case for case in corpus if case.name not in KNOWN_CRASHES]
    good = [
        Event(f"good-{n}", f"good-u{n % 4}", catalog[n % 5].item_id, "click", None, now_ms - n)
        for n in range(20)
    ]
    sent = _produce_interleaved(producer, config.events_topic, cases, good)
    produced = len(cases) + len(good)
    assert len(sent) == produced
    bad = {src: c for src, c in sent.items() if isinstance(c, PoisonCase) and c.rejected}

    log = tmp_path / "worker.log"
    worker = _start_worker(config, log)
    try:
        url = metrics_url(log)

        def done() -> bool:
            try:
                consumed = scrape(url).get("freshrec_events_consumed_total", 0.0)
            except OSError:  # URLError included: the worker stopped serving
                consumed = 0.0
            return worker.poll() is not None or consumed >= produced  # dead ends it too

        assert wait_for(done, 180, step_s=0.5), _tail(log)
        assert worker.poll() is None, f"the worker stopped:\n{_tail(log)}"
        with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5) as health:
            assert health.status == 200

        metrics = scrape(url)
        rejected = _rejected_by_reason(metrics)
        assert metrics["freshrec_events_consumed_total"] == produced
        assert metrics["freshrec_events_processed_total"] + sum(rejected.values()) == produced
        assert metrics["freshrec_events_processed_total"] == produced - len(bad)
        assert rejected == Counter(case.expected for case in bad.values())

        letters = _dead_letters(bootstrap, config, len(bad))
        processed_but_dead = {src: sent[src] for src in letters if src not in bad}
        assert not processed_but_dead
        wrong = {
            case.name: (case.expected, letters[src].reason if src in letters else "processed")
            for src, case in bad.items()
            if src not in letters or letters[src].reason != case.expected
        }
        assert not wrong, "name: (owed, got)"
        for src, case in bad.items():  # byte for byte
            assert (letters[src].key, letters[src].value) == (case.key, case.value), case.name

        consumed, processed, rejected_total, _ = _stop(worker, log)
        assert (consumed, processed + rejected_total, rejected_total) == (
            produced,
            produced,
            len(bad),
        )
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)


# -- known crash paths, outside consumer/codec.py and consumer/worker.py -------------------


def test_record_far_over_a_lowered_max_event_bytes_is_dead_lettered_and_the_worker_goes_on(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker(max_event_bytes=MAX_EVENT_BYTES)
    corpus = poison_corpus(now_ms=int(time.time() * 1000), item_id="i0", limits=_limits(kw.config))
    [case] = [c for c in corpus if c.name == "record_over_max_event_bytes_by_128_kib"]
    _produce(producer, kw.config.events_topic, case.key, case.value)
    kw.worker.bootstrap()
    deadline = time.monotonic() + 60
    kw.worker.run(until=lambda: kw.worker.totals.consumed >= 1 or time.monotonic() > deadline)

    assert kw.worker.totals.rejected == 1
    [letter] = _dead_letters(bootstrap, kw.config, 1).values()
    assert (letter.value, letter.reason) == (case.value, "record_too_large")


def test_dead_letters_batched_beyond_a_lowered_dlq_limit_are_delivered(
    make_worker: Callable[..., KafkaWorker], producer: KafkaProducer, bootstrap: str
) -> None:
    kw = make_worker(max_event_bytes=64 << 10)
    garbage = [bytes([0xC1]) * (30 << 10) for _ in range(6)]  # each under the limit, 180 KiB
    for value in garbage:
        _produce(producer, kw.config.events_topic, b"k", value)
    kw.worker.bootstrap()
    deadline = time.monotonic() + 60
    kw.worker.run(
        until=lambda: kw.worker.totals.consumed >= len(garbage) or time.monotonic() > deadline
    )

    assert kw.worker.totals.rejected == len(garbage)
    letters = _dead_letters(bootstrap, kw.config, len(garbage))
    assert sorted(letter.value or b"" for letter in letters.values()) == garbage


def test_a_record_without_key_and_value_can_be_dead_lettered(
    make_worker: Callable[..., KafkaWorker], bootstrap: str
) -> None:
    kw = make_worker()
    # kafka-python cannot produce such a record to the events topic either, so this sends the
    # dead letter the worker's _decode would send for it, through the worker's own DLQ.
    kw.worker.dlq.send(Record(kw.config.events_topic, 0, 0, None, None), "not_msgpack", "null")
    kw.worker.dlq.flush()

    [letter] = read_topic(bootstrap, kw.config.dlq_topic, until=lambda rs: len(rs) >= 1)
    # kafka-python cannot send null key and null value: the key goes empty, and a header says so.
    headers = dict(letter.headers)
    assert (letter.key, letter.value) == (b"", None)
    assert (headers["freshrec.error"], headers[NULL_KEY_HEADER]) == (b"not_msgpack", b"1")
