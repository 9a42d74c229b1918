"""What the Kafka benchmarks share: a broker, topics, a fast producer, the bare loop.

The *bare loop* is the ceiling every worker number is compared with: a kafka-python consumer
that polls, msgpack-decodes each event, produces one msgpack message per event, flushes, and
commits, with nothing else in between. Whatever the worker does beyond that is its cost.

Examples
--------
>>> rig = Broker.ensure(None)  # doctest: +SKIP
>>> rig.create_topics({"bench.events": 8})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[1]
BENCH_PORT = int(os.environ.get("FRESHREC_BENCH_KAFKA_PORT", "29092"))


def log(msg: str) -> None:
    """Progress goes to stderr, tables to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table, every cell through ``str``.

    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """A bootstrap address, and whether this process started the broker (and stops it)."""

    bootstrap: str
    started: bool = False

    @classmethod
    def ensure(cls, bootstrap: str | None) -> Broker:
        """Use ``bootstrap`` if given, else start deploy/kafka/local-kafka.sh on the bench
        port (``FRESHREC_BENCH_KAFKA_PORT``, default 29092) unless one already listens there."""
        if bootstrap:
            if not _reachable(bootstrap):
                raise SystemExit(f"no Kafka broker answers at {bootstrap}")
            return cls(bootstrap)
        address = f"127.0.0.1:{BENCH_PORT}"
        if _reachable(address):
            return cls(address)
        log(f"starting a local Kafka broker on {address}")
        subprocess.run(
            [str(ROOT / "deploy/kafka/local-kafka.sh"), "start"], env=_broker_env(), check=True
        )
        return cls(address, started=True)

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                [str(ROOT / "deploy/kafka/local-kafka.sh"), "stop"], env=_broker_env(), check=False
            )

    def create_topics(self, topics: dict[str, int], configs: dict[str, str] | None = None) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(","))
        try:
            admin.create_topics(
                [
                    NewTopic(name, parts, 1, topic_configs=configs or {})
                    for name, parts in topics.items()
                ]
            )
        finally:
            admin.close()

    def producer(self, **overrides: Any) -> Any:
        from kafka import KafkaProducer

        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "acks": "all",
            "linger_ms": 20,
            "batch_size": 256 * 1024,
        }
        settings.update(overrides)
        return KafkaProducer(**settings)

    def consumer(self, topic: str, **overrides: Any) -> Any:
        from kafka import KafkaConsumer

        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": 500,
        }
        settings.update(overrides)
        consumer = KafkaConsumer(**settings)
        consumer.subscribe([topic])
        return consumer


def _broker_env() -> dict[str, str]:
    return dict(os.environ, FRESHREC_KAFKA_PORT=str(BENCH_PORT))


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def produce_all(
    broker: Broker, topic: str, pairs: Sequence[tuple[bytes, bytes]], *, label: str
) -> float:
    """Send every (key, value) as fast as the producer goes; returns messages/s."""
    from serving.publisher import flush_sends

    producer = broker.producer()
    start = time.perf_counter()
    pending: list[Any] = []
    try:
        for i, (key, value) in enumerate(pairs):
            pending.append(producer.send(topic, key=key, value=value))
            if len(pending) >= 20_000:
                flush_sends(producer, pending, 120.0, label)
                pending = []
                log(f"{label}: {i + 1:,}/{len(pairs):,} sent")
        flush_sends(producer, pending, 120.0, label)
    finally:
        producer.close(timeout=30)
    return len(pairs) / (time.perf_counter() - start)


def bare_loop(
    broker: Broker,
    in_topic: str,
    out_topic: str,
    n_events: int,
    *,
    group: str,
    batch_size: int = 500,
    timeout_s: float = 600.0,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    stop: Callable[[], bool] | None = None,
    stall_s: float | None = None,
    reopen: int = 0,
) -> tuple[int, float]:
    """The ceiling: consume, decode, produce one message per event, flush, commit.

    Runs until ``n_events`` are consumed (or ``stop()``); returns (events, seconds from the
    first record to the last commit). ``on_batch`` sees each decoded batch after its commit.

    ``stall_s``, for a caller that wrote every event beforehand: after that long without a
    record, close the consumer and open a new one in the same group, at most ``reopen``
    times, then give up (``RuntimeError``). The new consumer starts at the group's committed
    offsets, and every batch is committed before the next poll, so no event is counted twice;
    the stalled time is left out of the returned seconds. Twice on 2026-12-04 (once in the
    throughput bench, once in CI's run of its test) kafka-python 3.0.12's consumer joined its
    group and then fetched nothing, with no warning logged: once it sent no heartbeat after a
    routine rejoin, once it held no partition for 120 s. See docs/performance.md.
    """
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from serving.publisher import flush_sends

    consumer = broker.consumer(in_topic, group_id=group, max_poll_records=batch_size)
    producer = broker.producer(linger_ms=100)  # flushed per batch, as the worker
    done, first, stalled, reopened = 0, 0.0, 0.0, 0
    deadline = time.monotonic() + timeout_s
    last_record = time.monotonic()
    try:
        while done < n_events and time.monotonic() < deadline:
            if stop is not None and stop():
                break
            polled = consumer.poll(timeout_ms=200, max_records=batch_size)
            if not polled:
                idle = time.monotonic() - last_record
                if stall_s is None or idle <= stall_s:
                    continue
                what = (
                    f"bare loop: no record of {in_topic} for {stall_s:.0f}s after "
                    f"{done:,} of {n_events:,} events (assigned: {consumer.assignment()})"
                )
                if reopened >= reopen:
                    raise RuntimeError(what)
                reopened += 1
                log(f"{what}; opening a new consumer ({reopened} of {reopen})")
                # Bounded: close() would otherwise wait up to request_timeout_ms (305 s) for a
                # coordinator that this consumer may have lost.
                consumer.close(timeout_ms=10_000)
                consumer = broker.consumer(in_topic, group_id=group, max_poll_records=batch_size)
                stalled += idle if first else 0.0  # the clock starts at the first record
                last_record = time.monotonic()
                continue
            last_record = time.monotonic()
            if not first:
                first = time.perf_counter()
            offsets: dict[Any, Any] = {}
            pending: list[Any] = []
            decoded: list[dict[str, Any]] = []
            for tp, records in polled.items():
                for rec in records:
                    event = msgpack.unpackb(rec.value, raw=False)
                    out = {
                        "v": 1,
                        "user_id": event["user_id"],
                        "item_id": event["item_id"],
                        "ts": event["ts"],
                    }
                    pending.append(producer.send(out_topic, key=rec.key, value=msgpack.packb(out)))
                    decoded.append(event)
                offsets[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(
                    records[-1].offset + 1, "", -1
                )
            flush_sends(producer, pending, 60.0, "bare loop")
            consumer.commit(offsets)
            done += len(decoded)
            if on_batch is not None:
                on_batch(decoded)
        return done, time.perf_counter() - first - stalled if first else 0.0
    finally:
        consumer.close()
        producer.close(timeout=10)


def main(argv: list[str] | None = None) -> int:
    """``python bench/kafka_rig.py bare ...``: run the bare loop as its own process until
    SIGTERM (bench/latency.py starts it this way)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Run the bare kafka-python loop until SIGTERM.")
    parser.add_argument("command", choices=["bare"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--in", dest="in_topic", required=True)
    parser.add_argument("--out", dest="out_topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    bare_loop(
        Broker(args.bootstrap),
        args.in_topic,
        args.out_topic,
        1 << 62,
        group=args.group,
        batch_size=args.batch_size,
        timeout_s=1e9,
        stop=lambda: stopping,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
