"""The output side: Recommendation encoding, the publisher, Prometheus metrics and HTTP."""

from __future__ import annotations

from serving.codec import decode_recommendation, encode_recommendation
from serving.exceptions import PublishError
from serving.publisher import InMemoryPublisher, KafkaPublisher, Publisher

__all__ = [
    "InMemoryPublisher",
    "KafkaPublisher",
    "PublishError",
    "Publisher",
    "decode_recommendation",
    "encode_recommendation",
]
