"""Creating freshrec's topics (idempotently) with the settings the contracts need."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from consumer.config import PRODUCER_BATCH_BYTES, WorkerConfig

__all__ = ["TopicRow", "create_topics", "dlq_record_bytes", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)

_COMPACTED = {"cleanup.policy": "compact"}


# Kafka's default max.message.bytes: the largest record the events topic takes unless it was
# configured otherwise, whatever --max-event-bytes says.
BROKER_MESSAGE_BYTES = 1 << 20


def dlq_record_bytes(config: WorkerConfig) -> int:
    """The largest dead letter (and producer request) the worker must be able to send: any
    record the events topic can hold, over the limit or not, plus room for headers; never
    below a full producer batch, or the broker refuses batches of small dead letters.

    Examples
    --------
    >>> dlq_record_bytes(WorkerConfig(max_event_bytes=64 << 10)) == (1 << 20) + (64 << 10)
    True
    """
    return max(config.max_event_bytes, BROKER_MESSAGE_BYTES, PRODUCER_BATCH_BYTES) + (64 << 10)


def topic_specs(config: WorkerConfig) -> dict[str, tuple[int, dict[str, str]]]:
    """Name -> (partitions, topic configs) of every topic the worker uses.

    Examples
    --------
    >>> sorted(topic_specs(WorkerConfig(partitions=4)))
    ['freshrec.events', 'freshrec.events.dlq', 'freshrec.items', 'freshrec.model', \
'freshrec.recommendations', 'freshrec.state.users', 'freshrec.users']
    """
    dlq_bytes = str(dlq_record_bytes(config))
    return {
        config.events_topic: (config.partitions, {}),
        config.items_topic: (config.partitions, dict(_COMPACTED)),
        # User profiles (key = user_id), compacted like the items: read whole by every worker.
        config.users_topic: (config.partitions, dict(_COMPACTED)),
        config.recommendations_topic: (config.partitions, dict(_COMPACTED)),
        config.dlq_topic: (1, {"max.message.bytes": dlq_bytes}),
        # Partition p holds the state of the users of events partition p: same count.
        config.state_topic: (config.partitions, dict(_COMPACTED)),
        # One snapshot of the shared head per worker (key), the latest kept.
        config.model_topic: (1, dict(_COMPACTED)),
    }


def ensure_topics(admin: Any, config: WorkerConfig) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    existing = set(admin.list_topics())
    created = []
    specs = topic_specs(config)
    if config.events_topic in existing and config.state_topic not in existing:
        # The state topic follows the events topic that is there, whatever --partitions says.
        (described,) = admin.describe_topics([config.events_topic])
        specs[config.state_topic] = (len(described["partitions"]), specs[config.state_topic][1])
    for name, (partitions, configs) in specs.items():
        if name in existing:
            continue
        try:
            admin.create_topics(
                [NewTopic(name, partitions, config.replication_factor, topic_configs=configs)]
            )
            created.append(name)
        except TopicAlreadyExistsError:
            pass  # another worker won the race
    if created:
        log.info("created topics: %s", ", ".join(created))
    return created


@dataclass(frozen=True)
class TopicRow:
    """One topic as ``freshrec topics create`` reports it."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]
    status: str  # "created" or "exists"


def create_topics(config: WorkerConfig) -> list[TopicRow]:
    """Create the missing topics on the cluster of ``config`` and describe all of them as
    they are now (partitions and replication read back from the cluster)."""
    from kafka import KafkaAdminClient

    from consumer.security import check_kafka_login, kafka_security_settings

    check_kafka_login(config, config.bootstrap_servers)
    admin = KafkaAdminClient(
        bootstrap_servers=config.bootstrap_servers.split(","), **kafka_security_settings(config)
    )
    try:
        created = set(ensure_topics(admin, config))
        specs = topic_specs(config)
        # A topic created a moment ago may be described without partitions until the
        # metadata has spread; ask again for a few seconds.
        deadline = time.monotonic() + 10.0
        while True:
            described = {d["name"]: d for d in admin.describe_topics(list(specs))}
            if all(d["partitions"] for d in described.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        admin.close()
    rows = []
    for name, (_, configs) in specs.items():
        partitions = described[name]["partitions"]
        replication = len(partitions[0]["replica_nodes"]) if partitions else 0
        status = "created" if name in created else "exists"
        rows.append(TopicRow(name, len(partitions), replication, configs, status))
    return rows
