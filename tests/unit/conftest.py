"""Shared fixtures of the unit suite: a tiny deterministic encoder, factories, the real encoder."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from consumer.codec import encode_event, encode_item
from consumer.dlq import InMemoryDeadLetters
from consumer.source import InMemorySource, Record
from consumer.worker import Worker
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, EventType, Item
from serving.metrics import WorkerMetrics
from serving.publisher import InMemoryPublisher

EVENTS_TOPIC = "freshrec.events"
ITEMS_TOPIC = "freshrec.items"
# 2023-11-14: comfortably in the past of any clock these tests run on, and not in the future.
T0_MS = 1_700_000_000_000

VOCABULARY = (
    "space", "war", "love", "paris", "robot", "ship", "kiss", "rain",
    "star", "alien", "cook", "food", "horse", "desert", "music", "dance",
)  # fmt: skip

# A small catalog whose texts only use VOCABULARY words (plus stop words the encoder ignores).
CATALOG = {
    "a": "Space war",
    "b": "Robot ship in space",
    "c": "Love in Paris",
    "d": "Love and a kiss in the rain",
    "e": "Alien war in space",
    "f": "Cook food",
    "g": "Horse in the desert",
    "h": "Music and dance",
}


class BagOfWordsEncoder:
    """A deterministic stand-in for TextEncoder: one dimension per vocabulary word, normalised.

    Counts how many texts it was asked to encode, so tests can check the encoding cache.
    """

    name = "bag-of-words"

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY) -> None:
        self.vocabulary = tuple(vocabulary)
        self.encoded_texts = 0

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, texts: Sequence[str]) -> Tensor:
        self.encoded_texts += len(texts)
        rows = []
        for text in texts:
            words = set(re.findall(r"[a-z]+", text.lower()))
            rows.append([float(w in words) for w in self.vocabulary])
        v = torch.tensor(rows, dtype=torch.float32).reshape(len(texts), self.dim)
        # The epsilon keeps a text without vocabulary words from becoming a zero vector.
        return torch.nn.functional.normalize(v + 1e-6, dim=-1)


@pytest.fixture
def bag_encoder() -> BagOfWordsEncoder:
    return BagOfWordsEncoder()


def make_items(catalog: dict[str, str] | None = None) -> list[Item]:
    return [Item(item_id, title) for item_id, title in (catalog or CATALOG).items()]


@pytest.fixture
def catalog_items() -> list[Item]:
    """The items of CATALOG."""
    return make_items()


@pytest.fixture
def make_recommender(
    bag_encoder: BagOfWordsEncoder,
) -> Callable[..., Recommender]:
    """``make_recommender(items=CATALOG items, **ModelConfig fields)`` over the bag encoder."""

    def make(items: Iterable[Item] | None = None, **config: Any) -> Recommender:
        rec = Recommender(bag_encoder, ModelConfig(**config))
        rec.upsert_items(list(items) if items is not None else make_items())
        return rec

    return make


@pytest.fixture
def make_event() -> Callable[..., Event]:
    """``make_event(user, item, ...)``: an Event with a fresh id and a valid recent ts."""
    counter = iter(range(1_000_000))

    def make(
        user: str = "u1",
        item: str = "a",
        type: EventType = "click",
        value: float | None = None,
        ts: int | None = None,
        event_id: str | None = None,
    ) -> Event:
        n = next(counter)
        return Event(
            event_id if event_id is not None else f"e{n}",
            user,
            item,
            type,
            value,
            ts if ts is not None else T0_MS + n * 1000,
        )

    return make


@pytest.fixture
def event_record(make_event: Callable[..., Event]) -> Callable[..., Record]:
    """``event_record(offset, user=..., item=..., partition=0)``: an encoded events-topic record."""

    def make(offset: int, *, partition: int = 0, **event: Any) -> Record:
        ev = make_event(**event)
        return Record(EVENTS_TOPIC, partition, offset, ev.user_id.encode(), encode_event(ev))

    return make


def raw_event_record(offset: int, value: bytes | None, *, partition: int = 0) -> Record:
    return Record(EVENTS_TOPIC, partition, offset, b"u1", value)


@pytest.fixture
def raw_record() -> Callable[..., Record]:
    """``raw_record(offset, value_bytes)``: an events-topic record with arbitrary bytes."""
    return raw_event_record


@pytest.fixture
def item_record() -> Callable[..., Record]:
    """``item_record(offset, item_id, title)``; ``title=None`` makes a tombstone."""

    def make(offset: int, item_id: str, title: str | None) -> Record:
        value = None if title is None else encode_item(Item(item_id, title))
        return Record(ITEMS_TOPIC, 0, offset, item_id.encode(), value)

    return make


@dataclass
class WorkerRig:
    """A worker and the in-memory edges it talks to."""

    worker: Worker
    source: InMemorySource
    publisher: InMemoryPublisher
    dlq: InMemoryDeadLetters
    metrics: WorkerMetrics

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@pytest.fixture
def make_worker(make_recommender: Callable[..., Recommender]) -> Callable[..., WorkerRig]:
    """``make_worker(records, source=..., publisher=..., items=..., **Worker kwargs)``.

    Without ``items`` the recommender starts with CATALOG already loaded.
    """

    def make(
        records: Iterable[Record] = (),
        *,
        source: InMemorySource | None = None,
        publisher: InMemoryPublisher | None = None,
        items: Any = None,
        recommender: Recommender | None = None,
        **kwargs: Any,
    ) -> WorkerRig:
        src = source if source is not None else InMemorySource(records)
        pub = publisher if publisher is not None else InMemoryPublisher()
        dlq = InMemoryDeadLetters()
        metrics = WorkerMetrics()
        rec = recommender
        if rec is None:
            rec = make_recommender(items=[]) if items is not None else make_recommender()
        kwargs.setdefault("poll_timeout_ms", 0)
        worker = Worker(
            source=src,
            recommender=rec,
            publisher=pub,
            dlq=dlq,
            metrics=metrics,
            items=items,
            **kwargs,
        )
        return WorkerRig(worker, src, pub, dlq, metrics)

    return make


@pytest.fixture(scope="session")
def text_encoder() -> Any:
    """The real all-MiniLM-L6-v2 encoder on CPU, loaded once per session (about 5 s)."""
    from learner.encoder import TextEncoder

    return TextEncoder(device="cpu")
