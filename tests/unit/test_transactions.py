"""Specifications of the exactly-once committer's watchdog (consumer.transactions): kafka-python's
transactional calls wait without a bound, so a hung one must end in a rolled-back batch and a
fresh producer, never in a hung worker. The hang itself is simulated: a real broker cannot be
made to leave commit_transaction waiting on demand."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from consumer.transactions import TransactionAborted, TransactionalCommitter, TransactionalProducer

pytestmark = pytest.mark.timeout(30)


class StuckProducer:
    """Speaks kafka-python's transactional calls; ``stuck`` names one that never returns."""

    def __init__(self, stuck: str = "", failing: str = "") -> None:
        self.stuck, self.failing = stuck, failing
        self.calls: list[str] = []
        self.release = threading.Event()

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.stuck:
            self.release.wait()
        if name == self.failing:
            raise RuntimeError(f"{name} refused")

    def init_transactions(self) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send(self, topic: str, **kwargs: Any) -> None:
        self._call("send")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self) -> None:
        self._call("commit_transaction")

    def abort_transaction(self) -> None:
        self._call("abort_transaction")

    def close(self, timeout: float | None = None) -> None:
        self._call("close")


class Consumer:
    def group_metadata(self) -> str:
        return "group"


def rig(first: StuckProducer) -> tuple[TransactionalProducer, TransactionalCommitter, list[Any]]:
    made: list[Any] = []

    def factory() -> StuckProducer:
        made.append(first if not made else StuckProducer())
        return made[-1]

    producer = TransactionalProducer(factory, timeout_s=0.2)
    committer = TransactionalCommitter(producer, Consumer(), timeout_s=0.2)
    return producer, committer, made


def test_a_commit_that_hangs_rolls_the_batch_back_onto_a_fresh_producer() -> None:
    producer, committer, made = rig(StuckProducer(stuck="commit_transaction"))
    producer.send("out", value=b"x")
    with pytest.raises(TransactionAborted, match="commit_transaction did not return"):
        committer.commit({("events", 0): 4})
    # The hung producer's state is unknown: it is replaced, not asked to abort.
    assert len(made) == 2 and producer.producer is made[1]
    assert made[1].calls == ["init_transactions"]
    assert not producer.in_transaction
    made[0].release.set()


def test_a_refused_commit_is_aborted_on_the_same_producer() -> None:
    producer, committer, made = rig(StuckProducer(failing="send_offsets_to_transaction"))
    producer.send("out", value=b"x")
    with pytest.raises(TransactionAborted, match="refused"):
        committer.commit({("events", 0): 4})
    assert made[0].calls[-1] == "abort_transaction" and len(made) == 1
    assert not producer.in_transaction


def test_a_committed_batch_sends_its_offsets_into_the_transaction() -> None:
    producer, committer, made = rig(StuckProducer())
    producer.send("out", value=b"x")
    committer.commit({("events", 0): 4})
    assert made[0].calls == [
        "init_transactions",
        "begin_transaction",
        "send",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
