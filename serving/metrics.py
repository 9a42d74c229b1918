"""The worker's Prometheus metrics, on a registry the worker owns (never the global one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["STAGES", "WorkerMetrics"]

STAGES = (
    "decode",
    "items",
    "profiles",
    "restore",
    "learn",
    "rank",
    "publish",
    "state",
    "flush",
    "commit",
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class WorkerMetrics:
    """Every series the worker exports.

    Examples
    --------
    >>> m = WorkerMetrics()
    >>> m.events_rejected.labels(reason="not_msgpack").inc()
    >>> m.registry.get_sample_value("freshrec_events_rejected_total", {"reason": "not_msgpack"})
    1.0
    >>> m.registry.get_sample_value("freshrec_stage_seconds_count", {"stage": "rank"})
    0.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "freshrec_events_consumed_total", "Event records read from Kafka", registry=r
        )
        self.events_processed = Counter(
            "freshrec_events_processed_total", "Events learned from", registry=r
        )
        self.events_rejected = Counter(
            "freshrec_events_rejected_total",
            "Event records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.items_rejected = Counter(
            "freshrec_items_rejected_total",
            "Item records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.item_images_invalid = Counter(
            "freshrec_item_images_invalid_total",
            "Item images that did not decode (the item is stored with its text embedding only)",
            registry=r,
        )
        self.items_updated = Counter(
            "freshrec_items_updated_total", "Item upserts and deletions applied", ["op"], registry=r
        )
        self.profiles_rejected = Counter(
            "freshrec_profiles_rejected_total",
            "User profile records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.profiles_updated = Counter(
            "freshrec_profiles_updated_total",
            "User profile upserts and deletions applied",
            ["op"],
            registry=r,
        )
        self.batch_size = Histogram(
            "freshrec_batch_size_events",
            "Event records per micro-batch",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "freshrec_stage_seconds",
            "Time spent per micro-batch in each stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Every stage's series exists at zero from the first scrape. A series born with its first
        # batch already counted shows no increase to rate(): a short run that falls between two
        # scrapes would leave the stage panels empty.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        self.gc_pause_seconds = Histogram(
            "freshrec_gc_pause_seconds",
            "Python garbage-collector pauses, by generation (serving.gcpause)",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        for generation in ("0", "1", "2"):
            self.gc_pause_seconds.labels(generation=generation)
        self.event_to_publish_seconds = Histogram(
            "freshrec_event_to_publish_seconds",
            "From an event's Kafka timestamp to its user's recommendation being delivered",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.recommendations_published = Counter(
            "freshrec_recommendations_published_total", "Recommendation messages sent", registry=r
        )
        self.consumer_lag = Gauge(
            "freshrec_consumer_lag_events",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.catalog_items = Gauge(
            "freshrec_catalog_items", "Live items in the catalog", registry=r
        )
        self.profiles = Gauge(
            "freshrec_profiles", "Users with a profile (from the users topic)", registry=r
        )
        self.users_in_state = Gauge(
            "freshrec_users_in_state", "Users with state on this worker", registry=r
        )
        self.online_hit_rate = Gauge(
            "freshrec_online_hit_rate",
            "Share of events whose item was in the list last sent to that user (running mean)",
            registry=r,
        )
        self.online_hits = Counter(
            "freshrec_online_hits_total",
            "Events whose item was in the list last sent to that user",
            registry=r,
        )
        self.online_hit_trials = Counter(
            "freshrec_online_hit_trials_total",
            "Events of users who had been sent a list before",
            registry=r,
        )
        self.drift_detected = Counter(
            "freshrec_drift_detected_total", "Changes in the online hit rate (ADWIN)", registry=r
        )
        self.train_loss = Gauge("freshrec_train_loss", "BPR loss of the last head step", registry=r)
        self.model_version = Gauge(
            "freshrec_model_info", "Model in use (value 1)", ["model_version"], registry=r
        )
        self.head_steps = Counter("freshrec_head_steps_total", "Optimiser steps", registry=r)
        self.assigned_partitions = Gauge(
            "freshrec_assigned_partitions", "Event partitions owned by this worker", registry=r
        )
        self.rebalances = Counter(
            "freshrec_rebalances_total",
            "Partition assignments and revocations",
            ["kind"],
            registry=r,
        )
        self.ready = Gauge("freshrec_ready", "1 when the worker serves traffic", registry=r)
        self.events_duplicate = Counter(
            "freshrec_events_duplicate_total",
            "Events whose id the user's state already held (re-deliveries; no-ops)",
            registry=r,
        )
        self.state_restore_seconds = Histogram(
            "freshrec_state_restore_seconds",
            "Time to restore an assigned partition's users from the state changelog",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.state_restored_users = Counter(
            "freshrec_state_restored_users_total",
            "Users restored from the state changelog",
            registry=r,
        )
        self.backpressure = Gauge(
            "freshrec_backpressure",
            "1 while a batch cannot be delivered and the worker holds its partitions paused",
            registry=r,
        )
        self.delivery_retries = Counter(
            "freshrec_delivery_retries_total",
            "Retries of a batch's delivery (outputs, state) after a failure",
            registry=r,
        )
        self.partition_stalled = Gauge(
            "freshrec_partition_stalled",
            "1 when a partition has lag that has not shrunk for --stall-after-s seconds",
            ["topic", "partition"],
            registry=r,
        )
        self.users_evicted = Counter(
            "freshrec_users_evicted_total",
            "Users written to the local store and dropped from memory (over the bound, or idle)",
            registry=r,
        )
        self.users_loaded = Counter(
            "freshrec_users_loaded_total",
            "Users loaded from the local store on their next event",
            registry=r,
        )
        self.model_syncs = Counter(
            "freshrec_model_syncs_total",
            "Shared-head averages with the other workers (and snapshots published)",
            registry=r,
        )
        self.model_peers = Gauge(
            "freshrec_model_peers",
            "Other workers whose head snapshots were averaged in last time",
            registry=r,
        )
        self.transactions_aborted = Counter(
            "freshrec_transactions_aborted_total",
            "Exactly-once batches rolled back (and redone from the committed offsets)",
            registry=r,
        )
        self.state_records_written = Counter(
            "freshrec_state_records_written_total",
            "User-state records written to the changelog",
            registry=r,
        )

    def forget_partitions(self, tps: Iterable[tuple[str, int]]) -> None:
        """Drop the per-partition series of partitions this worker no longer owns (their new
        owner reports them), so that lag and stalls are not stuck at their last value.

        Examples
        --------
        >>> m = WorkerMetrics()
        >>> m.consumer_lag.labels(topic="t", partition="0").set(5)
        >>> m.forget_partitions([("t", 0), ("t", 1)])
        >>> m.registry.get_sample_value("freshrec_consumer_lag_events", {"topic": "t",
        ...                                 "partition": "0"})
        """
        for topic, partition in tps:
            for gauge in (self.consumer_lag, self.partition_stalled):
                with contextlib.suppress(KeyError):  # never reported
                    gauge.remove(topic, str(partition))

    def set_model_version(self, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(model_version=version).set(1)
