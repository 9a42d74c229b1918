"""Building a Kafka-backed worker from its config: the one place heavy things are constructed."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from consumer.changelog import KafkaStateLog
from consumer.codec import Limits
from consumer.config import PRODUCER_BATCH_BYTES, WorkerConfig
from consumer.dlq import KafkaDeadLetterQueue
from consumer.exceptions import ConfigError
from consumer.model_sync import KafkaSnapshotFeed, KafkaSnapshotSender, ModelSync
from consumer.residency import LocalStateStore, Residency
from consumer.security import kafka_security_settings
from consumer.source import ItemFeed, KafkaSource, TopicPartitionKey
from consumer.topics import dlq_record_bytes, ensure_topics
from consumer.transactions import (
    ReplaceableProducer,
    TransactionalCommitter,
    TransactionalProducer,
)
from consumer.worker import Worker
from learner.ann import set_threads as set_ann_threads
from learner.encoder import CachedEncoder, TextEncoder
from learner.head import HeadConfig
from learner.image_encoder import CachedImageEncoder, ImageEncoder
from learner.recommender import ModelConfig, Recommender
from learner.rules import Rules
from serving.gcpause import BusyYoungThreshold, GcPauses, tune_collector
from serving.metrics import WorkerMetrics
from serving.publisher import KafkaPublisher

__all__ = ["KafkaWorker", "build_recommender", "build_worker", "kafka_producer"]

log = logging.getLogger(__name__)


def build_recommender(config: WorkerConfig, rules: Rules | None = None) -> Recommender:
    """The frozen encoder (with its content-hash cache) and a fresh model that ranks with
    ``config.diversity`` and applies ``rules`` (the config file's ``[rules]``) to every list."""
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
        dedup_window=config.dedup_window,
        min_events=config.min_events,
        ann_min_items=config.ann_min_items,
        diversity=config.diversity,
        rerank_pool=config.rerank_pool,
        rules=rules or Rules(),
        profile_weight=config.profile_weight if config.profiles else 0.0,
        head=HeadConfig(
            rank=config.head_rank,
            lr=config.head_lr,
            item_lr=config.item_lr,
            negatives=config.negatives,
            seed=config.seed,
        ),
    )
    images = None
    if config.image_encoder:
        image_encoder = ImageEncoder(
            config.image_encoder,
            device=config.device,
            batch_size=config.image_encoder_batch_size or None,
        )
        log.info(
            "image encoder %s on %s (dim %d)",
            image_encoder.name,
            image_encoder.device,
            image_encoder.dim,
        )
        images = CachedImageEncoder(image_encoder)
    return Recommender(CachedEncoder(encoder), model, image_encoder=images)


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
        "batch_size": PRODUCER_BATCH_BYTES,
        "max_request_size": dlq_record_bytes(config),
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
    """A worker with its Kafka clients: ``start`` readies it for its first event, ``close``
    closes the clients in order. ``freshrec worker`` and bench/throughput.py start it alike::

        kw = build_worker(config)
        kw.start()
        try:
            kw.worker.run()
        finally:
            kw.close()
    """

    config: WorkerConfig
    worker: Worker
    source: KafkaSource
    item_feed: ItemFeed
    producer: Any
    state_log: KafkaStateLog | None = None
    residency: Residency | None = None
    user_feed: ItemFeed | None = None
    _pauses: GcPauses | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Time every garbage collection into the worker's metrics from now on, load the
        catalog and profiles (``Worker.bootstrap``), then tune the collector for the long run:
        the start-up heap frozen, the young threshold set (``serving.gcpause``)."""
        self._pauses = GcPauses(self.worker.metrics.gc_pause_seconds).install()
        self.worker.bootstrap()
        tune_collector(freeze=self.config.gc_freeze, young_threshold=self.config.gc_young_threshold)

    def close(self) -> None:
        if self._pauses is not None:
            self._pauses.remove()
        sync = self.worker.model_sync
        try:
            if sync is not None:
                sync.leave()
            self.producer.flush(timeout=30)
        finally:
            if sync is not None:
                sync.close()
            self.source.close()
            self.item_feed.close()
            if self.user_feed is not None:
                self.user_feed.close()
            if self.state_log is not None:
                self.state_log.close()
            if self.residency is not None:
                self.residency.store.close()
            self.producer.close(timeout=10)


def _profile_feed(config: WorkerConfig, isolation: dict[str, Any]) -> ItemFeed | None:
    """The users topic, read whole by every worker (profiles are global, like the catalog);
    None when profiles are off, or when the topic does not exist: a cluster whose topics were
    created before profiles existed keeps working, without them, and says so."""
    if not config.profiles:
        return None
    consumer = _consumer(config, group_id=None, **isolation)
    if config.users_topic not in consumer.topics():
        consumer.close()
        log.warning(
            "topic %s does not exist: no user profiles (create it with `freshrec topics "
            "create`, or pass --profiles false to say so)",
            config.users_topic,
        )
        return None
    return ItemFeed(consumer, config.users_topic)


def build_worker(
    config: WorkerConfig,
    *,
    recommender: Recommender | None = None,
    metrics: WorkerMetrics | None = None,
    rules: Rules | None = None,
) -> KafkaWorker:
    """Create topics if asked, connect to Kafka, and wire source, model and publisher.

    ``rules`` (``consumer.config_file.read_rules``) go into the model built here; a given
    ``recommender`` brings its own (``ModelConfig.rules``)."""
    from kafka import KafkaAdminClient
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor

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
    recommender = recommender or build_recommender(config, rules)
    if recommender.config.rules.active:
        log.info("business rules on every list: %s", recommender.config.rules)
    if str(recommender.device).startswith("cuda"):
        from serving.gpu import GpuCollector

        metrics.registry.register(GpuCollector(str(recommender.device)))
    exactly_once = config.guarantee == "exactly-once"
    producer: Any
    if exactly_once:
        tid = config.transactional_id or (
            f"{config.group_id}-{config.client_id}-{uuid.uuid4().hex[:12]}"
        )
        log.info("exactly-once: transactional id %s", tid)
        producer = TransactionalProducer(
            lambda: kafka_producer(
                config,
                transactional_id=tid,
                enable_idempotence=True,
                transaction_timeout_ms=config.transaction_timeout_ms,
            ),
            timeout_s=config.commit_timeout_s,
        )
    else:
        producer = ReplaceableProducer(lambda: kafka_producer(config))
    # Upstream producers may be transactional too: never read what they aborted.
    isolation = {"isolation_level": "read_committed"}

    # The listener runs on the consumer's event loop: it only counts and hands the news to the
    # worker, which restores or lets go of users between polls (``worker`` is bound below).
    # With cooperative-sticky the lists are only the partitions that moved (KIP-429).
    def on_assign(tps: list[TopicPartitionKey]) -> None:
        metrics.rebalances.labels(kind="assign").inc()
        metrics.assigned_partitions.set(len(source.assignment()))
        worker.on_assign(tps)

    def on_revoke(tps: list[TopicPartitionKey]) -> None:
        # Offsets are committed at the end of every batch, after its publish and its state
        # are durable, so nothing processed is uncommitted here.
        metrics.rebalances.labels(kind="revoke").inc()
        metrics.assigned_partitions.set(len(set(source.assignment()) - set(tps)))
        metrics.forget_partitions(tps)
        worker.on_revoke(tps)

    events_consumer = _consumer(
        config,
        group_id=config.group_id,
        # A cooperative rebalance's second round reaches the new owners at their next
        # heartbeat: kafka-python's 3 s default left moved partitions unowned that long.
        heartbeat_interval_ms=1000,
        partition_assignment_strategy=(
            (CooperativeStickyAssignor,)
            if config.assignor == "cooperative-sticky"
            else (RangePartitionAssignor,)
        ),
        **isolation,
    )
    source = KafkaSource(
        events_consumer, config.events_topic, on_assign=on_assign, on_revoke=on_revoke
    )
    item_feed = ItemFeed(_consumer(config, group_id=None, **isolation), config.items_topic)
    user_feed = _profile_feed(config, isolation)
    state_log = None
    if config.state_changelog:
        state_log = KafkaStateLog(
            producer,
            _consumer(config, group_id=None, **isolation),
            config.state_topic,
            flush_timeout_s=config.delivery_timeout_s,
        )
        _check_partitions(state_log.consumer, config)
    residency = None
    if config.max_users_in_memory > 0 or config.idle_user_ttl_s > 0:
        if state_log is None:
            raise ConfigError(
                "--max-users-in-memory and --idle-user-ttl-s need --state-changelog true: "
                "users leaving memory come back from it"
            )
        state_dir = Path(config.state_dir or tempfile.mkdtemp(prefix="freshrec-state-"))
        residency = Residency(
            recommender,
            LocalStateStore(
                state_dir / f"{config.client_id}-{os.getpid()}.sqlite",
                remove_dir=not config.state_dir,
            ),
            max_users=config.max_users_in_memory or sys.maxsize,
            idle_ttl_s=config.idle_user_ttl_s,
        )
        log.info("users beyond %d in memory wait in %s", residency.max_users, state_dir)
    model_sync = None
    if config.model_sync_s > 0:
        worker_id = config.transactional_id or f"{config.client_id}-{uuid.uuid4().hex[:12]}"
        model_sync = ModelSync(
            recommender.head,
            worker_id,
            # Text and image encoders: heads fused over other image vectors do not average.
            recommender.encoder_name,
            KafkaSnapshotFeed(_consumer(config, group_id=None), config.model_topic),
            # Its own plain producer: snapshots stay outside exactly-once transactions.
            KafkaSnapshotSender(kafka_producer(config), config.model_topic),
            interval_s=config.model_sync_s,
            max_age_s=config.model_max_age_s,
        )
    committer = (
        TransactionalCommitter(
            producer,
            events_consumer,
            timeout_s=config.commit_timeout_s,
            owned=lambda: set(source.assignment()),
        )
        if exactly_once
        else None
    )
    worker = Worker(
        source=source,
        recommender=recommender,
        publisher=KafkaPublisher(
            producer, config.recommendations_topic, flush_timeout_s=config.delivery_timeout_s
        ),
        dlq=KafkaDeadLetterQueue(
            producer, config.dlq_topic, flush_timeout_s=config.delivery_timeout_s
        ),
        metrics=metrics,
        items=item_feed,
        profiles=user_feed,
        batch_size=config.batch_size,
        poll_timeout_ms=config.poll_timeout_ms,
        top_k=config.top_k,
        limits=Limits(config.max_event_bytes, config.max_id_bytes, config.max_future_ms),
        state_log=state_log,
        committer=committer,
        max_backoff_s=config.max_backoff_s,
        stall_after_s=config.stall_after_s,
        replace_producer=producer.replace,
        residency=residency,
        model_sync=model_sync,
        threads=config.torch_threads if config.torch_threads > 0 else torch.get_num_threads(),
        young_gc=BusyYoungThreshold(config.gc_busy_young_threshold)
        if config.gc_busy_young_threshold > 0
        else None,
    )
    return KafkaWorker(config, worker, source, item_feed, producer, state_log, residency, user_feed)


def _check_partitions(consumer: Any, config: WorkerConfig) -> None:
    """The state topic must have as many partitions as the events topic: a user's state lives
    in the partition number of its events."""
    events = consumer.partitions_for_topic(config.events_topic) or set()
    state = consumer.partitions_for_topic(config.state_topic) or set()
    if not state:
        raise ConfigError(
            f"state topic {config.state_topic!r} does not exist: create it (compacted, "
            f"{len(events) or config.partitions} partitions) or pass --state-changelog false"
        )
    if events and len(events) != len(state):
        raise ConfigError(
            f"{config.state_topic!r} has {len(state)} partitions but {config.events_topic!r} "
            f"has {len(events)}: they must match"
        )
