"""The worker under outages, on the real broker (issue 5, tests 6, 8 and 9): its output topic
refusing writes (backpressure, a stalled partition) and the broker itself stopped for 30 s.
In each, the worker process stays up, stays calm, and loses nothing."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from consumer.datasets import synthetic_catalog, synthetic_events
from learner.encoder import CachedEncoder
from learner.types import Event
from tests.integration.helpers import metrics_url, scrape, wait_for
from tests.integration.test_exactly_once import stop
from tests.integration.test_state_recovery import (
    all_committed,
    assert_same_state,
    changelog,
    prepare,
    reference,
    send,
    start_worker,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(600)]

QUICK_RETRIES = {
    "FRESHREC_DELIVERY_TIMEOUT_S": "3",
    "FRESHREC_MAX_BACKOFF_S": "2",
    "FRESHREC_STALL_AFTER_S": "5",
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def block_writes(bootstrap: str, topic: str, blocked: bool) -> None:
    """A topic whose max.message.bytes is smaller than any record refuses every write (the
    broker's RECORD_TOO_LARGE); the default lets them through again."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    {"max.message.bytes": ("SET", "16") if blocked else ("DELETE", None)},
                )
            ]
        )
    finally:
        admin.close()


class Feed(threading.Thread):
    """Produces events at a steady rate until stopped; remembers what it sent."""

    def __init__(self, producer: KafkaProducer, prefix: str, events: list[Event], rate: float):
        super().__init__(daemon=True)
        self.producer, self.prefix, self.events, self.rate = producer, prefix, events, rate
        self.sent: list[Event] = []
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        for n, ev in enumerate(self.events):
            if self.halt.is_set():
                break
            time.sleep(max(0.0, start + n / self.rate - time.monotonic()))
            send(self.producer, self.prefix, [ev])
            self.sent.append(ev)


def test_a_blocked_output_pauses_the_partitions_and_loses_nothing(
    bootstrap: str, prefix: str, producer: KafkaProducer, encoder: CachedEncoder, tmp_path: Path
) -> None:
    items = synthetic_catalog(100, seed=11)
    events = synthetic_events(20_000, items, n_users=100, seed=11)
    prepare(bootstrap, prefix, producer, items)
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, prefix, log, QUICK_RETRIES)
    feed = Feed(producer, prefix, events, rate=200.0)
    recs = f"{prefix}recommendations"
    try:
        url = metrics_url(log)
        feed.start()
        assert wait_for(lambda: scrape(url).get("freshrec_events_processed_total", 0) > 200, 120), (
            log.read_text()[-3000:]
        )

        block_writes(bootstrap, recs, True)
        assert wait_for(lambda: scrape(url).get("freshrec_backpressure") == 1, 60)
        samples = []
        for _ in range(20):  # 20 s of a blocked output under steady input
            samples.append((rss_bytes(worker.pid), scrape(url)))
            time.sleep(1)
        rss = [r for r, _ in samples]
        assert max(rss[10:]) - max(rss[:10]) < 50 << 20, f"RSS grew: {rss}"
        assert all(m["freshrec_assigned_partitions"] == 3 for _, m in samples)  # in the group
        last = samples[-1][1]
        stalled = [k for k, v in last.items() if k.startswith("freshrec_partition_stalled")]
        assert any(last[k] == 1 for k in stalled), {k: last[k] for k in stalled}
        assert last["freshrec_delivery_retries_total"] >= 2
        assert "partitions revoked" not in log.read_text().split("delivery failed")[-1]

        block_writes(bootstrap, recs, False)
        feed.halt.set()
        feed.join(timeout=30)
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), log.read_text()[-3000:]
        after = scrape(url)
        assert after["freshrec_backpressure"] == 0
        assert wait_for(
            lambda: all(
                v == 0 for k, v in scrape(url).items() if k.startswith("freshrec_partition_stalled")
            ),
            30,
        )
        assert worker.poll() is None
        stop(worker, log)
    finally:
        feed.halt.set()
        if worker.poll() is None:
            worker.kill()
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, feed.sent))


def test_the_broker_stopped_for_30_s_is_waited_out_calmly_and_nothing_is_lost(
    bootstrap: str, prefix: str, producer: KafkaProducer, encoder: CachedEncoder, tmp_path: Path
) -> None:
    items = synthetic_catalog(100, seed=12)
    events = synthetic_events(2000, items, n_users=80, seed=12)
    before, after = events[:1000], events[1000:]
    prepare(bootstrap, prefix, producer, items)
    log = tmp_path / "worker.log"
    worker = start_worker(bootstrap, prefix, log, QUICK_RETRIES)
    kafka = ROOT / "deploy/kafka/local-kafka.sh"
    env = dict(os.environ, FRESHREC_KAFKA_PORT=bootstrap.rsplit(":", 1)[1])
    try:
        send(producer, prefix, before)
        assert wait_for(lambda: all_committed(bootstrap, prefix), 180, 0.5), log.read_text()[-3000:]

        subprocess.run([str(kafka), "stop"], env=env, check=True)
        try:
            cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
            time.sleep(30)  # the outage itself: nothing to wait for but time
            cpu = (cpu_seconds(worker.pid) - cpu0) / (time.monotonic() - t0)
            assert worker.poll() is None, log.read_text()[-3000:]
        finally:
            subprocess.run([str(kafka), "start"], env=env, check=True)
        assert cpu < 0.25, f"the worker used {cpu:.0%} of a core while the broker was down"

        send(producer, prefix, after)
        assert wait_for(lambda: all_committed(bootstrap, prefix), 240, 0.5), log.read_text()[-3000:]
        stop(worker, log)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert_same_state(changelog(bootstrap, prefix), reference(encoder, items, events))
