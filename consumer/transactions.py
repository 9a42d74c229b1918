"""How a batch's work becomes durable: its outputs, its users' state and its consumed offsets.

``SourceCommitter`` is at-least-once (the default): the worker flushes every output, then commits
the offsets; a crash in between replays the batch, whose user-state effects the dedup window
makes no-ops. ``TransactionalCommitter`` is exactly-once (``--guarantee exactly-once``): every
record a batch produces (recommendations, dead letters, state) and its offsets go in one Kafka
transaction (``send_offsets_to_transaction`` with the consumer's group metadata, so a worker
fenced out of the group by a rebalance cannot commit: KIP-447). Readers of the outputs use
``isolation_level=read_committed``.

kafka-python's transactional calls wait without a bound; each runs under a watchdog here and a
call that overruns it makes the committer throw the producer away and start a new one with the
same transactional id, whose ``init_transactions`` aborts whatever the old one left open.

Examples
--------
>>> from consumer.source import InMemorySource
>>> src = InMemorySource([])
>>> SourceCommitter(src).commit({("t", 0): 4}); src.committed
{('t', 0): 5}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from consumer.exceptions import FreshrecError
from consumer.source import Source, TopicPartitionKey

__all__ = [
    "Committer",
    "ReplaceableProducer",
    "SourceCommitter",
    "TransactionAborted",
    "TransactionalCommitter",
    "TransactionalProducer",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransactionAborted(FreshrecError):
    """The batch's transaction did not commit and was rolled back: redo the batch."""


class Committer(Protocol):
    """Makes a batch durable. ``commit`` raises :class:`TransactionAborted` when the batch must
    be redone from the last committed offsets (exactly-once only)."""

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None: ...

    def abort(self) -> None:
        """Roll back whatever the current batch produced (a no-op without transactions)."""
        ...

    @property
    def transactional(self) -> bool: ...


class SourceCommitter:
    """At-least-once: the offsets go to the consumer group once the outputs were flushed."""

    transactional = False

    def __init__(self, source: Source) -> None:
        self.source = source

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.source.commit(offsets)

    def abort(self) -> None:
        pass


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``call`` on a daemon thread and return its result, or raise ``TimeoutError`` when it
    has not returned within ``timeout_s`` (it is then left behind, never joined).

    Examples
    --------
    >>> bounded(lambda: 2 + 2, 1.0, "sum")
    4
    >>> import time
    >>> bounded(lambda: time.sleep(5), 0.05, "nap")
    Traceback (most recent call last):
    ...
    TimeoutError: nap did not return within 0.05s
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as err:  # handed to the caller below
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name=f"freshrec-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what} did not return within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


class ReplaceableProducer:
    """A ``KafkaProducer`` that can be swapped for a fresh one under the publisher, the DLQ and
    the changelog, which all hold this object. kafka-python's idempotent producer enters a
    fatal state after some errors (a record the broker refuses as too large, for one) and
    fails every later send: the worker replaces it after a failed delivery.

    ``factory`` makes a new ``KafkaProducer``.
    """

    def __init__(self, factory: Callable[[], Any], *, timeout_s: float = 30.0) -> None:
        self.factory = factory
        self.timeout_s = timeout_s
        self.producer = self._new()
        self.replaced = 0

    def _new(self) -> Any:
        return self.factory()

    def send(self, topic: str, **kwargs: Any) -> Any:
        return self.producer.send(topic, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.producer.close(timeout=timeout)

    def replace(self) -> None:
        """Drop the current producer (closing it without waiting) and start a fresh one."""
        old = self.producer
        threading.Thread(target=lambda: _quiet_close(old), daemon=True).start()
        self.producer = self._new()
        self.replaced += 1


class TransactionalProducer(ReplaceableProducer):
    """A transactional :class:`ReplaceableProducer`: ``send`` opens a transaction when none is
    open, and each new producer runs ``init_transactions`` (bounded) before use, which aborts
    whatever an earlier one with the same transactional id left open."""

    def __init__(self, factory: Callable[[], Any], *, timeout_s: float = 30.0) -> None:
        super().__init__(factory, timeout_s=timeout_s)
        self.in_transaction = False

    def _new(self) -> Any:
        producer = self.factory()
        bounded(producer.init_transactions, self.timeout_s, "init_transactions")
        return producer

    def send(self, topic: str, **kwargs: Any) -> Any:
        if not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
        return self.producer.send(topic, **kwargs)

    def replace(self) -> None:
        self.in_transaction = False
        super().replace()


def _quiet_close(producer: Any) -> None:
    try:
        producer.close(timeout=0)
    except Exception:  # the producer was being thrown away anyway
        log.debug("closing a replaced producer failed", exc_info=True)


class TransactionalCommitter:
    """Exactly-once: offsets join the open transaction, which then commits, under a watchdog."""

    transactional = True

    def __init__(
        self,
        producer: TransactionalProducer,
        consumer: Any,
        *,
        timeout_s: float = 30.0,
        owned: Callable[[], set[TopicPartitionKey]] | None = None,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.owned = owned
        self.aborted = 0

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        owned = self.owned() if self.owned is not None else set(offsets)
        payload = {
            TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1)
            for (t, p), o in offsets.items()
            if (t, p) in owned
        }
        if payload and not self.producer.in_transaction:
            self.producer.producer.begin_transaction()
            self.producer.in_transaction = True
        if not self.producer.in_transaction:
            return
        tx = self.producer.producer
        try:
            if payload:
                metadata = self.consumer.group_metadata()
                bounded(
                    lambda: tx.send_offsets_to_transaction(payload, metadata),
                    self.timeout_s,
                    "send_offsets_to_transaction",
                )
            bounded(tx.commit_transaction, self.timeout_s, "commit_transaction")
            self.producer.in_transaction = False
        except Exception as err:
            log.warning("transaction failed, rolling the batch back: %s", err)
            if isinstance(err, TimeoutError):
                # A call that hung leaves the producer in a state nobody knows: start over
                # (the new producer's init_transactions aborts the open transaction).
                self.aborted += 1
                self.producer.replace()
            else:
                self.abort()
            raise TransactionAborted(f"transaction rolled back: {err}") from err

    def abort(self) -> None:
        """Abort the open transaction; if that fails or hangs too, start a new producer (its
        ``init_transactions`` aborts what the old one left)."""
        if not self.producer.in_transaction:
            return
        self.aborted += 1
        try:
            bounded(self.producer.producer.abort_transaction, self.timeout_s, "abort_transaction")
            self.producer.in_transaction = False
        except Exception as err:
            log.warning("abort failed (%s): starting a new transactional producer", err)
            self.producer.replace()
