"""Where records come from: the ``Source`` protocol, an in-memory source, and Kafka sources.

``KafkaSource`` reads the events topic as a member of the consumer group and commits offsets
only when the worker says so (after it published). ``ItemFeed`` reads the whole items topic on
every worker (the catalog is global, not partitioned by user) without a group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.exceptions import SourceError

__all__ = [
    "InMemorySource",
    "ItemFeed",
    "KafkaSource",
    "Record",
    "Source",
    "TopicPartitionKey",
    "assign_whole_topic",
]

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Record:
    """One record as the worker sees it, independent of the Kafka client."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)

    @property
    def source(self) -> str:
        """``topic:partition:offset``, the DLQ's ``freshrec.source`` header."""
        return f"{self.topic}:{self.partition}:{self.offset}"


class Source(Protocol):
    """A stream of event records with explicit commits."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]: ...

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Mark records up to and including ``offsets[tp]`` as done."""
        ...

    def lag(self) -> dict[TopicPartitionKey, int]: ...

    def rewind(self) -> None:
        """Deliver again everything after the committed offsets (a rolled-back batch)."""
        ...

    def hold(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` taking no new records but staying in the consumer group
        (the worker holds a batch it cannot deliver yet: backpressure)."""
        ...

    def resume(self) -> None:
        """Take records again after :meth:`hold`."""
        ...

    def close(self) -> None: ...


class InMemorySource:
    """Serves a fixed list of records in batches; remembers commits.

    Examples
    --------
    >>> src = InMemorySource([Record("t", 0, i, None, b"x") for i in range(3)])
    >>> [r.offset for r in src.poll(0, 2)], [r.offset for r in src.poll(0, 2)], src.poll(0, 2)
    ([0, 1], [2], [])
    >>> src.commit({("t", 0): 2}); src.committed
    {('t', 0): 3}
    """

    def __init__(self, records: Iterable[Record]) -> None:
        self._records = list(records)
        self._pos = 0
        self.committed: dict[TopicPartitionKey, int] = {}
        self.closed = False
        self.holds = 0

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._records)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        batch: list[Record] = []
        while self._pos < len(self._records) and len(batch) < max_records:
            rec = self._records[self._pos]
            self._pos += 1
            if rec.offset >= self.committed.get((rec.topic, rec.partition), 0):
                batch.append(rec)  # (after a rewind, records committed meanwhile are skipped)
        return batch

    def hold(self, timeout_ms: int) -> None:
        self.holds += 1

    def resume(self) -> None:
        pass

    def rewind(self) -> None:
        """Go back to the first record not committed yet.

        >>> src = InMemorySource([Record("t", 0, i, None, b"x") for i in range(3)])
        >>> _ = src.poll(0, 2); src.commit({("t", 0): 0}); _ = src.poll(0, 1); src.rewind()
        >>> [r.offset for r in src.poll(0, 5)]
        [1, 2]
        """
        for n, rec in enumerate(self._records):
            if rec.offset >= self.committed.get((rec.topic, rec.partition), 0):
                self._pos = n
                return
        self._pos = len(self._records)

    def read_to_end(self, max_records: int = 5000) -> Iterable[list[Record]]:
        while batch := self.poll(0, max_records):
            yield batch

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        for tp, offset in offsets.items():
            self.committed[tp] = offset + 1

    def lag(self) -> dict[TopicPartitionKey, int]:
        return {}

    def close(self) -> None:
        self.closed = True


def _to_record(r: Any) -> Record:
    headers = tuple((k, v) for k, v in (r.headers or ()))
    return Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or 0, headers)


class _Listener:
    """Rebalance callbacks, forwarded to the worker's hooks as (topic, partition) pairs."""

    def __init__(
        self,
        on_assign: Callable[[list[TopicPartitionKey]], None],
        on_revoke: Callable[[list[TopicPartitionKey]], None],
    ) -> None:
        self.on_assign = on_assign
        self.on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Any) -> None:
        tps = sorted((tp.topic, tp.partition) for tp in revoked)
        log.info("partitions revoked: %s", tps, extra=_partitions("revoke", tps))
        self.on_revoke(tps)

    def on_partitions_assigned(self, assigned: Any) -> None:
        tps = sorted((tp.topic, tp.partition) for tp in assigned)
        log.info("partitions assigned: %s", tps, extra=_partitions("assign", tps))
        self.on_assign(tps)


def _partitions(event: str, tps: list[TopicPartitionKey]) -> dict[str, Any]:
    """The structured fields of an assign or revoke log line."""
    return {"event": event, "partitions": [f"{topic}:{partition}" for topic, partition in tps]}


class KafkaSource:
    """The events topic, read as a member of a consumer group, committed manually."""

    def __init__(
        self,
        consumer: Any,
        topic: str,
        *,
        on_assign: Callable[[list[TopicPartitionKey]], None] = lambda tps: None,
        on_revoke: Callable[[list[TopicPartitionKey]], None] = lambda tps: None,
    ) -> None:
        from kafka import ConsumerRebalanceListener

        class Listener(_Listener, ConsumerRebalanceListener):  # type: ignore[misc]
            pass

        self.consumer = consumer
        self.topic = topic
        self.consumer.subscribe([topic], listener=Listener(on_assign, on_revoke))

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [_to_record(r) for tp_records in batches.values() for r in tp_records]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    def assignment(self) -> list[TopicPartitionKey]:
        return sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        if not offsets:
            return
        owned = set(self.assignment())
        payload = {
            TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1)
            for (t, p), o in offsets.items()
            if (t, p) in owned  # a partition revoked meanwhile is committed by its new owner
        }
        if not payload:
            return
        try:
            self.consumer.commit(payload)
        except Exception as err:  # CommitFailedError after a rebalance, timeouts
            raise SourceError(f"commit of {len(payload)} partitions failed: {err}") from err

    def hold(self, timeout_ms: int) -> None:
        """Poll with every owned partition paused, so the group keeps this member (kafka-python
        needs a poll every ``max_poll_interval_ms``); a partition assigned meanwhile is paused
        too, and anything it returned anyway is sought back to be fetched again later."""
        from kafka.structs import TopicPartition

        self.consumer.pause(*self.consumer.assignment())
        got = self.consumer.poll(timeout_ms=timeout_ms)
        for tp, records in got.items():
            self.consumer.seek(TopicPartition(tp.topic, tp.partition), records[0].offset)
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        """Fetch again from every owned partition (after :meth:`hold`)."""
        self.consumer.resume(*self.consumer.assignment())

    def rewind(self) -> None:
        """Seek every owned partition back to its committed offset (or its beginning)."""
        from kafka.structs import TopicPartition

        for t, p in self.assignment():
            tp = TopicPartition(t, p)
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    def lag(self) -> dict[TopicPartitionKey, int]:
        from kafka.structs import TopicPartition

        out = {}
        for t, p in self.assignment():
            tp = TopicPartition(t, p)
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=0)
            except Exception:  # no position yet: nothing fetched for this partition
                continue
            if pos is not None:
                out[(t, p)] = max(0, high - pos)
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def assign_whole_topic(
    consumer: Any, topic: str, *, from_beginning: bool = True, timeout_s: float = 30.0
) -> list[Any]:
    """Assign every partition of ``topic`` to a group-less consumer and seek to its beginning
    (or end), waiting up to ``timeout_s`` for the topic's metadata; returns the partitions."""
    from kafka.structs import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + timeout_s
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.2)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise SourceError(f"topic {topic!r} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        consumer.seek_to_end(*tps)
    return tps


class ItemFeed:
    """The compacted items topic, every partition, from the beginning, no group, no commits."""

    def __init__(self, consumer: Any, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.partitions = assign_whole_topic(consumer, topic)

    def read_to_end(self, max_records: int = 5000) -> Iterable[list[Record]]:
        """Batches of records until every partition reached the end it had when called."""
        end = self.consumer.end_offsets(self.partitions)
        while any(self.consumer.position(tp) < end[tp] for tp in self.partitions):
            batch = self.poll(timeout_ms=500, max_records=max_records)
            if batch:
                yield batch

    def poll(self, timeout_ms: int = 0, max_records: int = 5000) -> list[Record]:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [_to_record(r) for tp_records in batches.values() for r in tp_records]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    def close(self) -> None:
        self.consumer.close(autocommit=False)
