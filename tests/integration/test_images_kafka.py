"""Image items on the real broker: item records with image bytes reach an image-enabled worker
through the items topic, rank beside items without images, and bad image bytes neither stop the
worker nor dead-letter the item (it is stored with its text only, and counted)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from consumer.app import KafkaWorker, build_worker
from consumer.codec import encode_event, encode_item
from consumer.config import WorkerConfig
from learner.encoder import CachedEncoder
from learner.image_encoder import CachedImageEncoder, ImageEncoder
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, Item
from serving.codec import decode_recommendation
from tests.fixtures.tiny_vit import png, write_tiny_vit
from tests.integration.helpers import read_all

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)


@pytest.fixture
def image_worker(
    make_config: Callable[..., WorkerConfig], encoder: CachedEncoder, tmp_path: Path
) -> Iterator[KafkaWorker]:
    vit = write_tiny_vit(tmp_path / "vit")
    config = make_config(image_encoder=str(vit))
    images = CachedImageEncoder(ImageEncoder(vit, device="cpu"))
    rec = Recommender(encoder, ModelConfig(min_events=1), image_encoder=images)
    kw = build_worker(config, recommender=rec)
    yield kw
    kw.close()


def test_image_items_from_the_items_topic_are_ranked_and_bad_images_only_counted(
    image_worker: KafkaWorker, producer: KafkaProducer, bootstrap: str
) -> None:
    kw, config = image_worker, image_worker.config
    items = [
        Item("red", "Toy Story (1995)", image=png((220, 30, 30))),
        Item("plain", "The Maltese Falcon (1941)"),
        Item("broken", "Saving Private Ryan (1998)", image=b"\x89PNG\r\n\x1a\n not really"),
        Item("blue", "Casablanca (1942)", image=png((30, 40, 220))),
    ]
    for it in items:
        producer.send(config.items_topic, key=it.item_id.encode(), value=encode_item(it))
    for n, item in enumerate(["red", "plain"]):
        event = Event(f"e{n}", "u1", item, "click", None, NOW_MS + n)
        producer.send(config.events_topic, key=b"u1", value=encode_event(event))
    producer.flush()

    kw.worker.bootstrap()
    rec = kw.worker.recommender
    assert all(it.item_id in rec.items for it in items)
    has_image = {i: bool(rec.items.has_image[rec.items.row_of(i)]) for i in ("red", "broken")}
    assert has_image == {"red": True, "broken": False}
    deadline = time.monotonic() + 60
    kw.worker.run(until=lambda: kw.worker.totals.processed >= 2 or time.monotonic() > deadline)
    assert kw.worker.totals.processed == 2
    registry = kw.worker.metrics.registry
    assert registry.get_sample_value("freshrec_item_images_invalid_total") == 1
    assert not read_all(bootstrap, config.dlq_topic)  # the item was valid: not dead-lettered
    latest = decode_recommendation(read_all(bootstrap, config.recommendations_topic)[-1].value)
    assert latest["user_id"] == "u1"
    assert {entry["item_id"] for entry in latest["items"]} == {"broken", "blue"}
    assert "+" in latest["model_version"]  # text and image encoders both named
