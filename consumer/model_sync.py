"""The shared head: workers publish snapshots of the head's shared parameters to the compacted
``freshrec.model`` topic and average in each other's (DESIGN §5). A new worker starts from the
snapshots already there.

Record (topic ``freshrec.model``, compacted, one partition, key = the publishing worker's id; a
null value when a worker leaves cleanly):
``{v:1, worker:str, ts:int ms, steps:int, encoder:str, params:{name: {shape:[int], data:bytes
float32 LE}}}``

Every ``interval_s`` a worker sets its shared parameters to the mean of its own and the latest
snapshot of every other worker not older than ``max_age_s``, then publishes its own. Snapshots
of another encoder, or of another shape, are ignored (and counted).

Examples
--------
>>> import numpy as np
>>> snap = Snapshot("w1", 5, 7, "enc", {"U": np.ones((2, 1), np.float32)})
>>> back = decode_snapshot(encode_snapshot(snap))
>>> back.worker, back.steps, back.params["U"].tolist()
('w1', 7, [[1.0], [1.0]])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

from learner.head import BilinearHead
from serving.publisher import send_or_raise

__all__ = [
    "KafkaSnapshotFeed",
    "KafkaSnapshotSender",
    "ModelSync",
    "Snapshot",
    "decode_snapshot",
    "encode_snapshot",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One worker's shared head parameters at one time."""

    worker: str
    ts_ms: int
    steps: int
    encoder: str
    params: Mapping[str, np.ndarray]


def encode_snapshot(snap: Snapshot) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        {
            "v": 1,
            "worker": snap.worker,
            "ts": snap.ts_ms,
            "steps": snap.steps,
            "encoder": snap.encoder,
            "params": {
                name: {"shape": list(a.shape), "data": a.astype("<f4").tobytes()}
                for name, a in snap.params.items()
            },
        },
        use_bin_type=True,
    )


def decode_snapshot(value: bytes) -> Snapshot:
    """The inverse of :func:`encode_snapshot`; ``ValueError`` for a record it cannot read."""
    try:
        obj = msgpack.unpackb(value, raw=False)
        if obj.get("v") != 1:
            raise ValueError(f"schema version {obj.get('v')!r}")
        params = {
            str(name): np.frombuffer(p["data"], dtype="<f4").reshape(p["shape"]).astype(np.float32)
            for name, p in obj["params"].items()
        }
        return Snapshot(
            str(obj["worker"]), int(obj["ts"]), int(obj["steps"]), str(obj["encoder"]), params
        )
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as err:
        raise ValueError(f"unreadable model snapshot: {err}") from err


class SnapshotFeed(Protocol):
    """Where snapshots come from: ``(key, value)`` pairs, value ``None`` for a tombstone."""

    def poll(self) -> Iterable[tuple[bytes, bytes | None]]: ...


class ModelSync:
    """Averages this worker's shared head with its peers' and publishes its own snapshots.

    ``feed`` yields the model topic's records (``read_to_end`` at :meth:`start`, new ones at
    each :meth:`tick`); ``send(key, value)`` publishes one.
    """

    def __init__(
        self,
        head: BilinearHead,
        worker_id: str,
        encoder_name: str,
        feed: SnapshotFeed,
        send: Callable[[bytes, bytes | None], None],
        *,
        interval_s: float = 30.0,
        max_age_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.head = head
        self.worker_id = worker_id
        self.encoder_name = encoder_name
        self.feed = feed
        self.send = send
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.peers: dict[str, Snapshot] = {}
        self.ignored = 0
        self.syncs = 0
        self._next = clock() + interval_s

    def _read(self) -> None:
        for key, value in self.feed.poll():
            worker = key.decode("utf-8", "replace")
            if worker == self.worker_id:
                continue
            if value is None:
                self.peers.pop(worker, None)
                continue
            try:
                snap = decode_snapshot(value)
            except ValueError as err:
                self.ignored += 1
                log.warning("ignoring model snapshot of %s: %s", worker, err)
                continue
            if not self._fits(snap):
                self.ignored += 1
                continue
            self.peers[worker] = snap

    def _fits(self, snap: Snapshot) -> bool:
        own = self.head.shared_state()
        if snap.encoder != self.encoder_name:
            log.warning("ignoring %s's snapshot: encoder %s, not %s", snap.worker, snap.encoder,
                        self.encoder_name)  # fmt: skip
            return False
        if {n: a.shape for n, a in snap.params.items()} != {n: a.shape for n, a in own.items()}:
            log.warning("ignoring %s's snapshot: parameter shapes differ", snap.worker)
            return False
        return True

    def _fresh_peers(self) -> list[Snapshot]:
        oldest = (self.clock() - self.max_age_s) * 1000
        return [s for s in self.peers.values() if s.ts_ms >= oldest]

    def start(self) -> int:
        """Before the first batch: take the mean of the peers' fresh snapshots, if any.
        Returns how many were averaged."""
        self._read()
        peers = self._fresh_peers()
        if peers:
            self.head.load_shared([dict(p.params) for p in peers])
            log.info("head starts from the mean of %d peers' snapshots", len(peers))
        return len(peers)

    def tick(self) -> bool:
        """Between batches: every ``interval_s``, average with the peers and publish."""
        self._read()
        if self.clock() < self._next:
            return False
        self._next = self.clock() + self.interval_s
        peers = self._fresh_peers()
        if peers:
            self.head.load_shared([self.head.shared_state(), *(dict(p.params) for p in peers)])
        self.publish()
        self.syncs += 1
        return True

    def publish(self) -> None:
        snap = Snapshot(
            self.worker_id,
            int(self.clock() * 1000),
            self.head.steps,
            self.encoder_name,
            self.head.shared_state(),
        )
        self.send(self.worker_id.encode(), encode_snapshot(snap))

    def leave(self) -> None:
        """A clean shutdown: a tombstone, so that peers stop averaging this worker in."""
        self.send(self.worker_id.encode(), None)

    def close(self) -> None:
        for part in (self.send, self.feed):
            close = getattr(part, "close", None)
            if close is not None:
                close()


class KafkaSnapshotFeed:
    """The model topic (one partition) from the beginning, without a group."""

    def __init__(self, consumer: Any, topic: str) -> None:
        from consumer.source import assign_whole_topic

        self.consumer = consumer
        assign_whole_topic(consumer, topic)
        self._started = False

    def poll(self) -> Iterable[tuple[bytes, bytes | None]]:
        out: list[tuple[bytes, bytes | None]] = []
        if not self._started:  # the whole topic as it is now, before the first batch
            self._started = True
            tps = list(self.consumer.assignment())
            end = self.consumer.end_offsets(tps)
            deadline = time.monotonic() + 30
            while any(self.consumer.position(tp) < end[tp] for tp in tps):
                if time.monotonic() > deadline:
                    log.warning("model topic not read to its end in 30s; going on")
                    break
                out.extend(self._records(500))
            return out
        return self._records(0)

    def _records(self, timeout_ms: int) -> list[tuple[bytes, bytes | None]]:
        got = self.consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        return [(r.key, r.value) for rs in got.values() for r in rs if r.key is not None]

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class KafkaSnapshotSender:
    """``send(key, value)`` on its own producer, not waiting for delivery (snapshots are
    periodic: a lost one is replaced by the next); ``close`` delivers what is pending."""

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def __call__(self, key: bytes, value: bytes | None) -> None:
        send_or_raise(self.producer, self.topic, key=key, value=value)

    def close(self) -> None:
        self.producer.close(timeout=10)
