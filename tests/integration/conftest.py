"""Fixtures for tests against the real Apache Kafka broker from deploy/kafka/local-kafka.sh.

``make test`` starts the broker and sets FRESHREC_TEST_BOOTSTRAP. Run directly with pytest, the
session starts (or reuses) the local broker on port 19092 itself. It never skips: a test that
needs Kafka and cannot reach it fails.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from consumer.app import KafkaWorker, build_worker
from consumer.config import WorkerConfig
from learner.encoder import CachedEncoder, TextEncoder
from learner.recommender import ModelConfig, Recommender

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bootstrap() -> str:
    servers = os.environ.get("FRESHREC_TEST_BOOTSTRAP")
    if servers:
        return servers
    port = "19092"
    env = dict(os.environ, FRESHREC_KAFKA_PORT=port)
    subprocess.run([str(ROOT / "deploy/kafka/local-kafka.sh"), "start"], env=env, check=True)
    return f"127.0.0.1:{port}"


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix per test, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="session")
def encoder() -> CachedEncoder:
    """The real default encoder, loaded once; its cache is shared by every test."""
    return CachedEncoder(TextEncoder(device="cpu"))


@pytest.fixture
def make_config(bootstrap: str, prefix: str) -> Callable[..., WorkerConfig]:
    def make(**overrides: Any) -> WorkerConfig:
        settings: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "group_id": f"{prefix}workers",
            "partitions": 2,
            "batch_size": 200,
            "poll_timeout_ms": 200,
            "metrics_port": 0,
            "device": "cpu",
        }
        settings.update(overrides)
        return WorkerConfig(**settings)

    return make


@pytest.fixture
def make_worker(
    make_config: Callable[..., WorkerConfig], encoder: CachedEncoder
) -> Iterator[Callable[..., KafkaWorker]]:
    """Builds in-process Kafka workers on the shared encoder; closes them after the test."""
    built: list[KafkaWorker] = []

    def make(model: ModelConfig | None = None, **overrides: Any) -> KafkaWorker:
        kw = build_worker(make_config(**overrides), recommender=Recommender(encoder, model))
        built.append(kw)
        return kw

    yield make
    for kw in built:
        kw.close()


@pytest.fixture
def producer(bootstrap: str) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    yield p
    p.close(timeout=10)
