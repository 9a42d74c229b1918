"""Building a Kafka-backed worker from its config: the one place heavy things are constructed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from consumer.codec import Limits
from consumer.config import WorkerConfig
from consumer.dlq import KafkaDeadLetterQueue
from consumer.security import kafka_security_settings
from consumer.source import ItemFeed, KafkaSource, TopicPartitionKey
from consumer.topics import ensure_topics
from consumer.worker import Worker
from learner.ann import set_threads as set_ann_threads
from learner.encoder import CachedEncoder, TextEncoder
from learner.head import HeadConfig
from learner.recommender import ModelConfig, Recommender
from serving.metrics import WorkerMetrics
from serving.publisher import KafkaPublisher

__all__ = ["KafkaWorker", "build_recommender", "build_worker", "kafka_producer"]

log = logging.getLogger(__name__)


def build_recommender(config: WorkerConfig) -> Recommender:
    """The frozen encoder (with its content-hash cache) and a fresh model."""
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
        set_ann_threads(config.torch_threads)  # FAISS's OpenMP threads share the same cores
    encoder = TextEncoder(
        config.encoder_dir or None,
        device=config.device,
        batch_size=config.encoder_batch_size,
        quantize=config.encoder_quantize,
    )
    log.info("encoder %s on %s (dim %d)", encoder.name, encoder.device, encoder.dim)
    model = ModelConfig(
        user_half_life_s=config.user_half_life_hours * 3600.0,
        trending_half_life_s=config.trending_half_life_hours * 3600.0,
        history_len=config.history_len,
        max_consumed=config.max_consumed,
        min_events=config.min_events,
        ann_min_items=config.ann_min_items,
        head=HeadConfig(
            rank=config.head_rank,
            lr=config.head_lr,
            item_lr=config.item_lr,
            negatives=config.negatives,
            seed=config.seed,
        ),
    )
    return Recommender(CachedEncoder(encoder), model)


def kafka_producer(config: WorkerConfig, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "acks": "all",
        # The worker flushes at the end of every micro-batch, which sends everything at once:
        # a long linger only lets a batch's records share requests instead of waking the
        # sender thread for nearly every record.
        "linger_ms": 100,
        "batch_size": 256 * 1024,
        "max_request_size": config.max_event_bytes + (64 << 10),
        "retries": 10,
        **kafka_security_settings(config),
    }
    settings.update(overrides)
    return KafkaProducer(**settings)


def _consumer(config: WorkerConfig, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": config.batch_size,
        "allow_auto_create_topics": False,
        "fetch_max_bytes": max(52_428_800, config.max_event_bytes * 2),
        "max_partition_fetch_bytes": max(1 << 20, config.max_event_bytes + (64 << 10)),
        **kafka_security_settings(config),
    }
    settings.update(overrides)
    return KafkaConsumer(**settings)


@dataclass
class KafkaWorker:
    """A worker with its Kafka clients, so that the CLI can close them in order."""

    config: WorkerConfig
    worker: Worker
    source: KafkaSource
    item_feed: ItemFeed
    producer: Any

    def close(self) -> None:
        try:
            self.producer.flush(timeout=30)
        finally:
            self.source.close()
            self.item_feed.close()
            self.producer.close(timeout=10)


def build_worker(
    config: WorkerConfig,
    *,
    recommender: Recommender | None = None,
    metrics: WorkerMetrics | None = None,
) -> KafkaWorker:
    """Create topics if asked, connect to Kafka, and wire source, model and publisher."""
    from kafka import KafkaAdminClient
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    if config.create_topics:
        admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap_servers.split(","),
            client_id=config.client_id,
            **kafka_security_settings(config),
        )
        try:
            ensure_topics(admin, config)
        finally:
            admin.close()
    metrics = metrics or WorkerMetrics()
    recommender = recommender or build_recommender(config)
    producer = kafka_producer(config)

    def on_assign(tps: list[TopicPartitionKey]) -> None:
        metrics.rebalances.labels(kind="assign").inc()
        metrics.assigned_partitions.set(len(tps))

    def on_revoke(tps: list[TopicPartitionKey]) -> None:
        # Offsets are committed at the end of every batch, after its publish, so nothing
        # processed is uncommitted here; flush any stray sends so the new owner sees them.
        metrics.rebalances.labels(kind="revoke").inc()
        try:
            producer.flush(timeout=10)
        finally:
            metrics.assigned_partitions.set(0)

    events_consumer = _consumer(
        config,
        group_id=config.group_id,
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )
    source = KafkaSource(
        events_consumer, config.events_topic, on_assign=on_assign, on_revoke=on_revoke
    )
    item_feed = ItemFeed(_consumer(config, group_id=None), config.items_topic)
    worker = Worker(
        source=source,
        recommender=recommender,
        publisher=KafkaPublisher(producer, config.recommendations_topic),
        dlq=KafkaDeadLetterQueue(producer, config.dlq_topic),
        metrics=metrics,
        items=item_feed,
        batch_size=config.batch_size,
        poll_timeout_ms=config.poll_timeout_ms,
        top_k=config.top_k,
        limits=Limits(config.max_event_bytes, config.max_id_bytes, config.max_future_ms),
    )
    return KafkaWorker(config, worker, source, item_feed, producer)
