"""Replaying a dataset into Kafka: the catalog (items and user profiles) first, then events in
timestamp order."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from consumer.codec import encode_event, encode_item, encode_user
from learner.types import Event, Item, UserProfile
from serving.publisher import flush_sends

__all__ = ["Pacer", "load_dataset", "load_profiles", "replay"]

log = logging.getLogger(__name__)


class Pacer:
    """Keeps a loop at ``rate`` iterations per second (0: no limit) without drifting.

    Examples
    --------
    >>> p = Pacer(0.0); p.wait(10**6)  # unlimited: never sleeps
    0.0
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def wait(self, done: int) -> float:
        """Sleep until ``done`` iterations are due; returns the seconds slept."""
        if self.rate <= 0:
            return 0.0
        ahead = self.start + done / self.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
            return ahead
        return 0.0


def load_dataset(
    name: str, *, synthetic_items: int = 10_000, synthetic_events: int = 200_000, seed: int = 0
) -> tuple[list[Item], list[Event]]:
    """Items and time-ordered events of ``ml-100k`` or the seeded ``synthetic`` generator."""
    from consumer import datasets

    if name == "ml-100k":
        return datasets.load_ml100k()
    if name == "synthetic":
        items = datasets.synthetic_catalog(synthetic_items, seed=seed)
        return items, datasets.synthetic_events(synthetic_events, items, seed=seed)
    raise ValueError(f"unknown dataset {name!r}")


def load_profiles(name: str) -> list[UserProfile]:
    """User profiles of a dataset: ml-100k's demographics; the synthetic generator has none."""
    from consumer import datasets

    if name == "ml-100k":
        return datasets.load_ml100k_users(datasets.fetch_ml100k())
    if name == "synthetic":
        return []
    raise ValueError(f"unknown dataset {name!r}")


def _send_all(
    producer: Any,
    topic: str,
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    rate: float,
    progress: bool,
    label: str,
) -> None:
    pacer = Pacer(rate)
    futures: list[Any] = []
    with tqdm(
        total=len(pairs), desc=label, unit="msg", disable=not progress, mininterval=0.5
    ) as bar:
        for i, (key, value) in enumerate(pairs):
            pacer.wait(i)
            futures.append(producer.send(topic, key=key, value=value))
            if len(futures) >= 10_000:
                flush_sends(producer, futures, 60.0, f"{label} records")
                futures = []
            bar.update(1)
        flush_sends(producer, futures, 60.0, f"{label} records")


def replay(
    *,
    dataset: str,
    bootstrap_servers: str,
    topic_prefix: str,
    rate: float = 0.0,
    limit: int = 0,
    items_only: bool = False,
    events_only: bool = False,
    users_only: bool = False,
    synthetic_items: int = 10_000,
    synthetic_events: int = 200_000,
    seed: int = 0,
    progress: bool = True,
    kafka_settings: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """Publish a dataset: the catalog (items, then the user profiles, which only ml-100k has),
    then the events; returns (items sent, events sent). ``items_only`` publishes the catalog
    (items and profiles), ``users_only`` the profiles alone, ``events_only`` the events alone.
    ``kafka_settings`` (security, from ``consumer.security.kafka_security_settings``) go to the
    producer."""
    from kafka import KafkaProducer

    items, events = load_dataset(
        dataset, synthetic_items=synthetic_items, synthetic_events=synthetic_events, seed=seed
    )
    if limit:
        events = events[:limit]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers.split(","),
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        **(kafka_settings or {}),
    )
    n_items = n_events = n_users = 0
    try:
        if not (events_only or users_only):
            pairs = [(it.item_id.encode(), encode_item(it)) for it in items]
            _send_all(
                producer, f"{topic_prefix}items", pairs, rate=0.0, progress=progress, label="items"
            )
            n_items = len(pairs)
        if not events_only:
            profiles = load_profiles(dataset)
            pairs = [(p.user_id.encode(), encode_user(p)) for p in profiles]
            _send_all(
                producer, f"{topic_prefix}users", pairs, rate=0.0, progress=progress, label="users"
            )
            n_users = len(pairs)
        if not (items_only or users_only):
            pairs = [(ev.user_id.encode(), encode_event(ev)) for ev in events]
            _send_all(
                producer,
                f"{topic_prefix}events",
                pairs,
                rate=rate,
                progress=progress,
                label="events",
            )
            n_events = len(pairs)
    finally:
        producer.close(timeout=30)
    log.info(
        "replayed %d items, %d user profiles and %d events of %s",
        n_items,
        n_users,
        n_events,
        dataset,
    )
    return n_items, n_events
