"""The dead-letter queue: bad records, byte for byte, with the reason and their origin."""

from __future__ import annotations

from typing import Any, Protocol

from consumer.source import Record
from serving.exceptions import PublishError
from serving.publisher import flush_sends, send_or_raise

__all__ = ["ERROR_HEADER", "DeadLetterQueue", "InMemoryDeadLetters", "KafkaDeadLetterQueue"]

ERROR_HEADER = "freshrec.error"
DETAIL_HEADER = "freshrec.error.detail"
SOURCE_HEADER = "freshrec.source"
NULL_KEY_HEADER = "freshrec.null-key"


class DeadLetterQueue(Protocol):
    def send(self, record: Record, reason: str, detail: str = "") -> None:
        """Queue ``record`` with its ``reason`` label (and a human-readable ``detail``)."""
        ...

    def flush(self) -> None: ...


class InMemoryDeadLetters:
    """Collects dead letters in a list (unit tests, ``freshrec evaluate``).

    Examples
    --------
    >>> dlq = InMemoryDeadLetters()
    >>> dlq.send(Record("t", 0, 5, b"k", b"\\xc1"), "not_msgpack", "FormatError")
    >>> dlq.letters[0][1], dlq.details[0]
    ('not_msgpack', 'FormatError')
    """

    def __init__(self) -> None:
        self.letters: list[tuple[Record, str]] = []
        self.details: list[str] = []

    def send(self, record: Record, reason: str, detail: str = "") -> None:
        self.letters.append((record, reason))
        self.details.append(detail)

    def flush(self) -> None:
        pass


class KafkaDeadLetterQueue:
    """Produces the original key and value unchanged to the dead-letter topic, with headers
    ``freshrec.error`` (the reason label), ``freshrec.error.detail`` (what exactly was wrong)
    and ``freshrec.source`` (``topic:partition:offset``)."""

    def __init__(self, producer: Any, topic: str, *, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[Any] = []
        # Letters of the batch in hand: a flush that fails sends them all again on the next
        # flush (the worker retries it), so a dead letter is never lost to a broker outage.
        self._letters: list[tuple[Record, str, str]] = []
        self._resend = False

    def send(self, record: Record, reason: str, detail: str = "") -> None:
        self._letters.append((record, reason, detail))
        self._send(record, reason, detail)

    def _send(self, record: Record, reason: str, detail: str) -> None:
        headers = [
            (ERROR_HEADER, reason.encode("utf-8")),
            (DETAIL_HEADER, detail[:1024].encode("utf-8", errors="replace")),
            (SOURCE_HEADER, record.source.encode("utf-8")),
        ]
        key = record.key
        if key is None and record.value is None:
            # kafka-python cannot produce a record with neither key nor value (other clients
            # can): it goes with an empty key and a header saying the original key was null.
            key = b""
            headers.append((NULL_KEY_HEADER, b"1"))
        self._pending.append(
            send_or_raise(self.producer, self.topic, key=key, value=record.value, headers=headers)
        )

    def flush(self) -> None:
        """Deliver every letter since the last successful flush, or raise PublishError."""
        if self._resend:
            self._pending = []
            for letter in self._letters:
                self._send(*letter)
        pending, self._pending = self._pending, []
        try:
            flush_sends(self.producer, pending, self.flush_timeout_s, "dead letters")
        except PublishError:
            self._resend = True
            raise
        self._letters, self._resend = [], False
