"""Publishing recommendations: one message per user, key = user_id, on the output topic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from learner.types import UserRecommendation
from serving.codec import encode_recommendation
from serving.exceptions import PublishError

__all__ = ["InMemoryPublisher", "KafkaPublisher", "Publisher", "flush_sends", "send_or_raise"]


def flush_sends(producer: Any, pending: Sequence[Any], timeout_s: float, what: str) -> None:
    """Flush ``producer`` and raise :class:`PublishError` unless every send in ``pending``
    (kafka-python futures) was delivered. ``what`` names the records in the message."""
    if not pending:
        return
    try:
        producer.flush(timeout=timeout_s)
    except Exception as err:  # kafka-python raises KafkaTimeoutError and others
        raise PublishError(f"flush of {len(pending)} {what} failed: {err}") from err
    failed = [f for f in pending if f.failed() or not f.is_done]
    if failed:
        first = failed[0].exception if failed[0].is_done else "not delivered in time"
        raise PublishError(f"{len(failed)} of {len(pending)} {what} failed: {first}")


def send_or_raise(producer: Any, topic: str, **kwargs: Any) -> Any:
    """``producer.send`` with its failures (a full buffer or missing metadata for longer than
    ``max_block_ms``, a closed producer) raised as :class:`PublishError`, which the worker
    answers with a retry, as it does a failed flush."""
    try:
        return producer.send(topic, **kwargs)
    except Exception as err:  # kafka-python raises KafkaTimeoutError and others
        raise PublishError(f"send to {topic} failed: {err}") from err


class Publisher(Protocol):
    """Where the worker sends recommendations. ``flush`` returns once all are delivered."""

    def publish(self, recs: Sequence[UserRecommendation]) -> None: ...

    def flush(self) -> None: ...


class InMemoryPublisher:
    """Keeps published lists in memory (tests and ``freshrec evaluate``).

    Examples
    --------
    >>> pub = InMemoryPublisher()
    >>> pub.publish([UserRecommendation("u1", [], "popular", "m", 0)]); pub.flush()
    >>> [r.user_id for r in pub.published]
    ['u1']
    """

    def __init__(self) -> None:
        self.published: list[UserRecommendation] = []
        self.flushes = 0

    def publish(self, recs: Sequence[UserRecommendation]) -> None:
        self.published.extend(recs)

    def flush(self) -> None:
        self.flushes += 1


class KafkaPublisher:
    """Sends encoded recommendations with a (shared, injected) ``KafkaProducer``.

    ``flush`` waits for every send of this batch and raises :class:`PublishError` if any
    failed, so the worker commits offsets only after its output is durable.
    """

    def __init__(self, producer: Any, topic: str, *, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[Any] = []

    def publish(self, recs: Sequence[UserRecommendation]) -> None:
        for rec in recs:
            self._pending.append(
                send_or_raise(
                    self.producer,
                    self.topic,
                    key=rec.user_id.encode("utf-8"),
                    value=encode_recommendation(rec),
                )
            )

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        flush_sends(self.producer, pending, self.flush_timeout_s, "recommendations")
