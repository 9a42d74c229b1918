"""Bounded reads of real Kafka topics and offsets for the integration tests."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool] = lambda records: False,
    timeout_s: float = 30.0,
    isolation_level: str = "read_uncommitted",
    settings: Mapping[str, Any] | None = None,
) -> list[Any]:
    """All records of ``topic`` from the beginning: until ``until(records)`` holds, or until
    the end offsets are reached once no more are expected, within ``timeout_s``. ``settings``
    are more client keyword arguments (security, for a secured listener)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        **(settings or {}),
    )
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if until(records):
                return records
            end = consumer.end_offsets(tps)
            caught_up = all(consumer.position(tp) >= end[tp] for tp in tps)
            if caught_up and until is _never:
                return records
        return records
    finally:
        consumer.close()


def _never(records: list[Any]) -> bool:
    return False


def read_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30.0,
    isolation_level: str = "read_uncommitted",
    settings: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Every record now in ``topic`` (committed ones only with ``read_committed``)."""
    return read_topic(
        bootstrap,
        topic,
        until=_never,
        timeout_s=timeout_s,
        isolation_level=isolation_level,
        settings=settings,
    )


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        out = {}
        for p in parts:
            c = consumer.committed(TopicPartition(topic, p))
            out[p] = -1 if c is None else c
        return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    """A bounded wait on a condition (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def topic_exists(bootstrap: str, topic: str, settings: Mapping[str, Any] | None = None) -> bool:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **(settings or {}))
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


def metrics_url(log: Path, timeout_s: float = 120.0) -> str:
    """The /metrics address a worker process logged at start."""
    assert wait_for(
        lambda: log.exists() and METRICS_URL.search(log.read_text(errors="replace")) is not None,
        timeout_s,
    ), log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    return METRICS_URL.findall(log.read_text(errors="replace"))[0]


def scrape(url: str) -> dict[str, float]:
    """A worker's /metrics as ``name{label="value",...}`` -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
