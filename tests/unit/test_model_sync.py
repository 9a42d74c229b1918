"""Specifications of the shared head (consumer.model_sync): workers average their heads'
shared parameters through snapshots on a compacted topic, here an in-memory one."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch

from consumer.model_sync import ModelSync, Snapshot, decode_snapshot, encode_snapshot
from learner.head import BilinearHead


class MemoryTopic:
    """A compacted topic's records in order, each reader with its own position."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def send(self, key: bytes, value: bytes | None) -> None:
        self.records.append((key, value))

    def reader(self) -> Reader:
        return Reader(self)


class Reader:
    def __init__(self, topic: MemoryTopic) -> None:
        self.topic, self.position = topic, 0

    def poll(self) -> Iterable[tuple[bytes, bytes | None]]:
        new = self.topic.records[self.position :]
        self.position = len(self.topic.records)
        return new


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def head(seed: int) -> BilinearHead:
    h = BilinearHead(dim=4, capacity=2)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        h.U.copy_(torch.randn(h.U.shape, generator=gen))
        h.V.copy_(torch.randn(h.V.shape, generator=gen))
    return h


def sync(h: BilinearHead, name: str, topic: MemoryTopic, clock: Clock, **kw: object) -> ModelSync:
    return ModelSync(h, name, "enc", topic.reader(), topic.send, clock=clock, **kw)  # type: ignore[arg-type]


def test_a_snapshot_round_trips() -> None:
    snap = Snapshot("w", 1, 2, "enc", head(0).shared_state())
    back = decode_snapshot(encode_snapshot(snap))
    assert back.worker == "w" and back.steps == 2
    assert all(np.array_equal(back.params[n], snap.params[n]) for n in snap.params)


def test_a_new_worker_starts_from_its_peers_snapshots() -> None:
    topic, clock = MemoryTopic(), Clock()
    a = head(1)
    sync(a, "a", topic, clock).publish()
    b = head(2)
    assert sync(b, "b", topic, clock).start() == 1
    assert torch.equal(b.U, a.U) and torch.equal(b.V, a.V) and torch.equal(b.mix, a.mix)


def test_each_tick_averages_with_the_peers_latest_snapshots_and_publishes() -> None:
    topic, clock = MemoryTopic(), Clock()
    a, b = head(1), head(2)
    sa = sync(a, "a", topic, clock, interval_s=30.0)
    sb = sync(b, "b", topic, clock, interval_s=30.0)
    sb.publish()
    before_a, before_b = a.U.clone(), b.U.clone()
    assert not sa.tick()  # not yet time
    clock.now += 31
    assert sa.tick()
    assert torch.allclose(a.U, (before_a + before_b) / 2)
    assert decode_snapshot(topic.records[-1][1] or b"").worker == "a"


def test_stale_foreign_and_departed_peers_are_not_averaged_in() -> None:
    topic, clock = MemoryTopic(), Clock()
    old = head(3)
    sync(old, "old", topic, clock).publish()
    clock.now += 3600  # an hour later: older than max_age_s
    other = Snapshot("foreign", int(clock.now * 1000), 0, "another-encoder", head(4).shared_state())
    topic.send(b"foreign", encode_snapshot(other))
    gone = head(5)
    gone_sync = sync(gone, "gone", topic, clock)
    gone_sync.publish()
    gone_sync.leave()
    mine = head(6)
    before = mine.U.clone()
    s = sync(mine, "mine", topic, clock, max_age_s=600.0)
    assert s.start() == 0
    assert torch.equal(mine.U, before)
    assert s.ignored == 1  # the foreign encoder's


def test_a_snapshot_of_another_shape_is_ignored() -> None:
    topic, clock = MemoryTopic(), Clock()
    small = BilinearHead(dim=3, capacity=2)
    topic.send(b"small", encode_snapshot(Snapshot("small", int(clock.now * 1000), 0, "enc",
                                                  small.shared_state())))  # fmt: skip
    s = sync(head(1), "mine", topic, clock)
    assert s.start() == 0 and s.ignored == 1


@pytest.mark.parametrize("value", [b"\xc1", b"\x80"])
def test_an_unreadable_snapshot_is_ignored_not_fatal(value: bytes) -> None:
    topic, clock = MemoryTopic(), Clock()
    topic.send(b"broken", value)
    s = sync(head(1), "mine", topic, clock)
    assert s.start() == 0 and s.ignored == 1
