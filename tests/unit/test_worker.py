"""Specifications of consumer.worker over the in-memory source, publisher and dead letters."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import pytest
import torch

from consumer.codec import Limits, encode_event
from consumer.source import InMemorySource, Record, TopicPartitionKey
from consumer.worker import StepReport, Worker
from learner.types import Event, UserRecommendation
from serving.exceptions import PublishError
from serving.gcpause import BusyYoungThreshold
from serving.publisher import InMemoryPublisher

pytestmark = pytest.mark.timeout(60)  # a loop that fails to stop must not hang the suite

EventRecord = Callable[..., Record]
RawRecord = Callable[..., Record]
ItemRecord = Callable[..., Record]
MakeWorker = Callable[..., Any]

TOPIC = "freshrec.events"
T0 = 1_700_000_000_000


CHANGES_BY_KIND: dict[str, dict[str, Any]] = {
    "wrong_type": {"ts": "yesterday"},
    "bad_id": {"user_id": ""},
    "unknown_type": {"type": "like"},
    "non_finite_value": {"value": float("nan")},
    "bad_ts": {"ts": -1},
    "missing_field": {"ts": None},
    "bad_version": {"v": 9},
    "unknown_item": {"item_id": "no-such-item"},
    "record_too_large": {"padding": "x" * 2048},  # the worker under test allows 1 KiB
}


def bad_value(kind: str) -> bytes:
    """The value bytes of one bad event record of each kind."""
    if kind == "not_msgpack":
        return b"\xc1\xc1"
    if kind == "not_a_map":
        return bytes(msgpack.packb(["u9", "a"]))
    good: dict[str, Any] = {
        "v": 1,
        "event_id": "bad",
        "user_id": "u9",
        "item_id": "a",
        "type": "click",
        "value": None,
        "ts": T0,
    }
    return bytes(msgpack.packb({**good, **CHANGES_BY_KIND[kind]}))


BAD_KINDS = [
    "not_msgpack",
    "not_a_map",
    "wrong_type",
    "bad_id",
    "unknown_type",
    "non_finite_value",
    "bad_ts",
    "missing_field",
    "bad_version",
    "unknown_item",
    "record_too_large",
]


def users_of(recs: Iterable[UserRecommendation]) -> list[str]:
    return [r.user_id for r in recs]


# -- bad records -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_record_goes_to_dlq_with_reason_and_good_records_around_it_are_processed(
    make_worker: MakeWorker, event_record: EventRecord, raw_record: RawRecord, kind: str
) -> None:
    bad = raw_record(1, bad_value(kind))
    rig = make_worker(
        [event_record(0, user="u1", item="a"), bad, event_record(2, user="u2", item="c")],
        limits=Limits(max_record_bytes=1024),
    )
    report = rig.worker.step()

    assert report == StepReport(consumed=3, processed=2, rejected=1, published=2)
    [(letter, reason)] = rig.dlq.letters
    assert letter == bad  # byte for byte, with its origin
    assert letter.source == f"{TOPIC}:0:1"
    assert reason.split(":")[0] == kind
    assert sorted(users_of(rig.publisher.published)) == ["u1", "u2"]
    assert rig.sample("freshrec_events_rejected_total", reason=kind) == 1
    assert rig.worker.recommender.users.event_count("u9") == 0


def test_null_event_value_goes_to_dlq(
    make_worker: MakeWorker, event_record: EventRecord, raw_record: RawRecord
) -> None:
    rig = make_worker([raw_record(0, None), event_record(1)])
    assert rig.worker.step().rejected == 1
    assert rig.dlq.letters[0][1].startswith("not_msgpack")


def test_event_for_a_deleted_item_goes_to_dlq_as_unknown_item(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(0, item="g")])
    rig.worker.recommender.delete_items(["g"])
    rig.worker.step()
    assert rig.sample("freshrec_events_rejected_total", reason="unknown_item") == 1
    assert rig.dlq.letters[0][1] == "unknown_item"


def test_dlq_error_header_is_the_bare_reason_label(
    make_worker: MakeWorker, raw_record: RawRecord
) -> None:
    rig = make_worker([raw_record(0, bad_value("unknown_type"))])
    rig.worker.step()
    assert rig.dlq.letters[0][1] == "unknown_type"


def test_a_batch_of_only_bad_records_is_committed_and_publishes_nothing(
    make_worker: MakeWorker, raw_record: RawRecord
) -> None:
    rig = make_worker([raw_record(i, b"\xc1") for i in range(4)])
    report = rig.worker.step()
    assert report == StepReport(consumed=4, processed=0, rejected=4, published=0)
    assert rig.publisher.published == []
    assert rig.source.committed == {(TOPIC, 0): 4}


def test_processed_plus_rejected_equals_consumed_in_reports_and_metrics(
    make_worker: MakeWorker, event_record: EventRecord, raw_record: RawRecord
) -> None:
    records = []
    for offset in range(30):
        if offset % 4 == 1:
            records.append(raw_record(offset, bad_value(BAD_KINDS[offset % len(BAD_KINDS)])))
        else:
            records.append(event_record(offset, user=f"u{offset % 5}", item="abcdefgh"[offset % 8]))
    rig = make_worker(records, batch_size=7, limits=Limits(max_record_bytes=1024))
    reports = []
    while not rig.source.exhausted:
        reports.append(rig.worker.step())

    consumed = sum(r.consumed for r in reports)
    processed = sum(r.processed for r in reports)
    rejected = sum(r.rejected for r in reports)
    assert consumed == 30
    assert rejected == len([r for r in records if r.offset % 4 == 1])
    assert processed + rejected == consumed
    assert rig.sample("freshrec_events_consumed_total") == consumed
    assert rig.sample("freshrec_events_processed_total") == processed
    total_rejected = sum(
        rig.sample("freshrec_events_rejected_total", reason=kind) for kind in BAD_KINDS
    )
    assert total_rejected == rejected
    assert len(rig.dlq.letters) == rejected


# -- coalescing and publishing -----------------------------------------------------------


def test_one_list_is_published_per_touched_user_per_batch(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    users = ["u1", "u2", "u1", "u1", "u3", "u2", "u1", "u4"]
    rig = make_worker(
        [event_record(i, user=u, item="abcdefgh"[i]) for i, u in enumerate(users)], batch_size=6
    )
    first = rig.worker.step()
    assert users_of(rig.publisher.published) == ["u1", "u2", "u3"]
    second = rig.worker.step()
    assert users_of(rig.publisher.published[3:]) == ["u1", "u4"]
    assert (first.published, second.published) == (3, 2)
    assert rig.sample("freshrec_recommendations_published_total") == 5


def test_published_lists_reflect_the_batch_they_follow(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(0, user="u1", item="a", ts=T0 + 5)], top_k=3)
    rig.worker.step()
    [rec] = rig.publisher.published
    assert len(rec.items) == 3
    assert "a" not in [it.item_id for it in rec.items]
    assert rec.event_ts == T0 + 5
    assert rec.model_version == rig.worker.recommender.model_version


def test_on_published_sees_every_published_batch(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    seen: list[list[str]] = []
    rig = make_worker(
        [event_record(i, user=f"u{i}") for i in range(4)],
        batch_size=2,
        on_published=lambda recs: seen.append(users_of(recs)),
    )
    rig.worker.run(until=lambda: rig.source.exhausted)
    assert seen == [["u0", "u1"], ["u2", "u3"]]


# -- commits -----------------------------------------------------------------------------


def test_offsets_of_good_and_bad_records_are_committed_per_partition(
    make_worker: MakeWorker, event_record: EventRecord, raw_record: RawRecord
) -> None:
    rig = make_worker(
        [
            event_record(10, partition=0),
            event_record(7, partition=1),
            raw_record(11, b"\xc1", partition=0),
            event_record(8, partition=1),
        ]
    )
    rig.worker.step()
    assert rig.source.committed == {(TOPIC, 0): 12, (TOPIC, 1): 9}


class FlakyPublisher(InMemoryPublisher):
    """Fails its first ``failures`` flushes (a broker outage, a blocked output topic); on
    ``stop_on`` it also asks the worker to stop, as SIGTERM would mid-outage."""

    def __init__(self, failures: int, stop_on: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.failures, self.stop_on = failures, stop_on

    def flush(self) -> None:
        if self.failures:
            self.failures -= 1
            if self.stop_on is not None:
                self.stop_on()
            raise PublishError("broker unreachable")
        super().flush()


def test_a_failed_delivery_is_retried_with_partitions_held_and_committed_once_delivered(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    publisher = FlakyPublisher(failures=3)
    rig = make_worker([event_record(0), event_record(1)], publisher=publisher, max_backoff_s=0.01)
    report = rig.worker.step()
    assert report.processed == 2 and report.published == 1
    assert rig.source.holds >= 3  # polled with partitions paused between attempts
    assert rig.source.committed == {(TOPIC, 0): 2}
    assert rig.sample("freshrec_delivery_retries_total") == 3
    assert rig.sample("freshrec_backpressure") == 0
    assert rig.sample("freshrec_events_processed_total") == 2


def test_a_stop_during_a_failing_delivery_ends_the_loop_without_committing(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(i) for i in range(4)], max_backoff_s=0.01)
    rig.worker.publisher = FlakyPublisher(failures=99, stop_on=rig.worker.stop)
    with pytest.raises(PublishError, match="broker unreachable"):
        rig.worker.run(max_batches=3)
    assert rig.source.committed == {}
    assert rig.sample("freshrec_events_processed_total") == 0


class LoggingSource(InMemorySource):
    def __init__(self, records: Iterable[Record], log: list[str]) -> None:
        super().__init__(records)
        self.log = log

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.log.append("commit")
        super().commit(offsets)


class LoggingPublisher(InMemoryPublisher):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def publish(self, recs: Sequence[UserRecommendation]) -> None:
        self.log.append("publish")
        super().publish(recs)

    def flush(self) -> None:
        self.log.append("flush")
        super().flush()


def test_offsets_are_committed_only_after_the_publish_is_flushed(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    log: list[str] = []
    records = [event_record(i) for i in range(4)]
    rig = make_worker(
        source=LoggingSource(records, log), publisher=LoggingPublisher(log), batch_size=2
    )
    rig.worker.run(until=lambda: rig.source.exhausted)
    assert log == ["publish", "flush", "commit"] * 2


def test_an_empty_poll_commits_and_publishes_nothing(make_worker: MakeWorker) -> None:
    log: list[str] = []
    rig = make_worker(source=LoggingSource([], log), publisher=LoggingPublisher(log))
    assert rig.worker.step() == StepReport()
    assert log == []


# -- items -------------------------------------------------------------------------------


def test_item_records_are_applied_at_bootstrap(
    make_worker: MakeWorker, item_record: ItemRecord
) -> None:
    items = InMemorySource(
        [
            item_record(0, "a", "Space war"),
            item_record(1, "b", "Robot ship in space"),
            item_record(2, "c", "Love in Paris"),
            item_record(3, "c", None),  # tombstone
            item_record(4, "b", "Cook food"),
        ]
    )
    rig = make_worker(items=items)
    assert not rig.worker.ready
    changes = rig.worker.bootstrap()
    rec = rig.worker.recommender
    assert changes == 2  # a and b stored; c was never live
    assert "a" in rec.items and "b" in rec.items and "c" not in rec.items
    newest = rec.encoder.encode(["Cook food"])[0]  # the newest version of b won
    assert torch.equal(rec.items.embeddings[rec.items.row_of("b")], newest)
    assert rig.worker.ready
    assert rig.sample("freshrec_ready") == 1
    assert rig.sample("freshrec_catalog_items") == 2
    assert items.exhausted


def test_item_records_are_applied_during_run_before_the_events_of_the_step(
    make_worker: MakeWorker, item_record: ItemRecord, event_record: EventRecord
) -> None:
    items = InMemorySource([item_record(0, "n1", "Space war"), item_record(1, "n2", "Cook food")])
    rig = make_worker([event_record(0, item="n1")], items=items)
    report = rig.worker.step()  # no bootstrap: items come in the step
    assert report.item_changes == 2
    assert report.processed == 1 and report.rejected == 0
    assert rig.sample("freshrec_items_updated_total", op="upsert") == 2


class PushableItems:
    """An items feed that tests can add records to between steps."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.pending = list(records)

    def push(self, *records: Record) -> None:
        self.pending.extend(records)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        batch, self.pending = self.pending[:max_records], self.pending[max_records:]
        return batch

    def read_to_end(self, max_records: int = 5000) -> Iterable[list[Record]]:
        while batch := self.poll(0, max_records):
            yield batch


def test_tombstone_during_run_removes_the_item_and_later_events_for_it_are_rejected(
    make_worker: MakeWorker, item_record: ItemRecord, event_record: EventRecord
) -> None:
    feed = PushableItems([item_record(0, "a", "Space war"), item_record(1, "e", "Alien war")])
    events = [event_record(0, user="u1", item="a"), event_record(1, user="u2", item="e")]
    rig = make_worker(events, items=feed, batch_size=1)
    rig.worker.bootstrap()
    rig.worker.step()
    assert [it.item_id for it in rig.publisher.published[0].items] == ["e"]

    feed.push(item_record(2, "e", None))
    report = rig.worker.step()
    assert report.item_changes == 1
    assert report.rejected == 1
    assert rig.dlq.letters[0][0].offset == 1
    assert rig.sample("freshrec_events_rejected_total", reason="unknown_item") == 1
    assert rig.sample("freshrec_items_updated_total", op="delete") == 1
    assert rig.sample("freshrec_catalog_items") == 1


def test_bad_item_record_goes_to_dlq_and_the_rest_of_the_catalog_loads(
    make_worker: MakeWorker, item_record: ItemRecord
) -> None:
    bad = Record("freshrec.items", 0, 1, b"x", b"\xc1")
    items = InMemorySource([item_record(0, "a", "Space war"), bad, item_record(2, "b", "Cook")])
    rig = make_worker(items=items)
    assert rig.worker.bootstrap() == 2
    [(letter, reason)] = rig.dlq.letters
    assert letter == bad
    assert reason.startswith("not_msgpack")


def test_bad_item_records_do_not_count_as_rejected_events(
    make_worker: MakeWorker, item_record: ItemRecord, event_record: EventRecord
) -> None:
    items = InMemorySource(
        [item_record(0, "a", "Space war"), Record("freshrec.items", 0, 1, b"x", b"\xc1")]
    )
    rig = make_worker([event_record(0, item="a")], items=items)
    rig.worker.bootstrap()
    rig.worker.run(until=lambda: rig.source.exhausted)
    consumed = rig.sample("freshrec_events_consumed_total")
    processed = rig.sample("freshrec_events_processed_total")
    rejected = rig.sample("freshrec_events_rejected_total", reason="not_msgpack")
    assert (consumed, processed) == (1, 1)
    assert processed + rejected == consumed


# -- the loop stops by itself ------------------------------------------------------------


def test_run_max_batches_stops_after_that_many_non_empty_batches(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(i) for i in range(10)], batch_size=3)
    assert rig.worker.run(max_batches=2) == 2
    assert rig.sample("freshrec_events_consumed_total") == 6
    assert rig.source.committed == {(TOPIC, 0): 6}
    assert not rig.source.exhausted


def test_run_until_stops_when_the_condition_holds(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(i) for i in range(10)], batch_size=3)
    assert rig.worker.run(until=lambda: rig.source.exhausted) == 4
    assert rig.source.committed == {(TOPIC, 0): 10}
    assert rig.worker.batches == 4


def test_run_until_already_true_does_not_poll(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(0)])
    assert rig.worker.run(until=lambda: True) == 0
    assert not rig.source.exhausted


def test_stop_ends_the_loop_after_the_batch_in_hand(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    holder: dict[str, Worker] = {}
    rig = make_worker(
        [event_record(i) for i in range(10)],
        batch_size=2,
        on_published=lambda recs: holder["worker"].stop(),
    )
    holder["worker"] = rig.worker
    assert rig.worker.run() == 1
    assert rig.worker.stopping
    assert rig.source.committed == {(TOPIC, 0): 2}


def test_stop_before_run_means_run_returns_at_once(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    rig = make_worker([event_record(0)])
    rig.worker.stop()
    assert rig.worker.run(max_batches=5) == 0


# -- metrics -----------------------------------------------------------------------------


def test_metrics_count_consumed_processed_and_rejected_by_reason(
    make_worker: MakeWorker, event_record: EventRecord, raw_record: RawRecord
) -> None:
    rig = make_worker(
        [
            event_record(0, user="u1", item="a"),
            raw_record(1, bad_value("bad_ts")),
            raw_record(2, bad_value("bad_ts")),
            raw_record(3, bad_value("unknown_item")),
            event_record(4, user="u1", item="b"),
            event_record(5, user="u2", item="a"),
        ],
        batch_size=4,
    )
    rig.worker.run(until=lambda: rig.source.exhausted)
    sample = rig.sample
    assert sample("freshrec_events_consumed_total") == 6
    assert sample("freshrec_events_processed_total") == 3
    assert sample("freshrec_events_rejected_total", reason="bad_ts") == 2
    assert sample("freshrec_events_rejected_total", reason="unknown_item") == 1
    assert sample("freshrec_users_in_state") == 2
    assert sample("freshrec_batch_size_events_count") == 2
    assert sample("freshrec_stage_seconds_count", stage="commit") == 2


class QueueSource(InMemorySource):
    """An in-memory source that tests can add records to between steps."""

    def __init__(self) -> None:
        super().__init__([])
        self.queue: list[Record] = []

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        batch, self.queue = self.queue[:max_records], self.queue[max_records:]
        return batch


def test_metrics_track_the_online_hit_rate_of_lists_sent(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    source = QueueSource()
    rig = make_worker(source=source, top_k=1)
    source.queue.append(event_record(0, user="u1", item="a"))
    rig.worker.step()
    shown = rig.publisher.published[0].items[0].item_id
    missed = next(i for i in "abcdefgh" if i not in {"a", shown})
    source.queue += [
        event_record(1, user="u1", item=shown),
        event_record(2, user="u1", item=missed),
    ]
    rig.worker.step()
    assert rig.sample("freshrec_online_hit_trials_total") == 2
    assert rig.sample("freshrec_online_hits_total") == 1
    assert rig.sample("freshrec_online_hit_rate") == 0.5


def test_each_worker_owns_its_registry(make_worker: MakeWorker, event_record: EventRecord) -> None:
    one = make_worker([event_record(0)])
    two = make_worker([])
    one.worker.step()
    assert one.sample("freshrec_events_consumed_total") == 1
    assert two.sample("freshrec_events_consumed_total") == 0


def test_encoded_events_decode_inside_the_worker_unchanged(make_worker: MakeWorker) -> None:
    event = Event("e-1", "ü-ser", "a", "rating", 4.0, T0)
    rig = make_worker([Record(TOPIC, 0, 0, b"x", encode_event(event))])
    rig.worker.step()
    assert rig.worker.recommender.users.event_count("ü-ser") == 1


# -- compute threads ----------------------------------------------------------------------


@pytest.fixture
def torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class SizedBatches(InMemorySource):
    """Serves its records in batches of the given sizes, one per poll."""

    def __init__(self, records: Sequence[Record], sizes: list[int]) -> None:
        super().__init__(records)
        self.sizes = sizes

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        return super().poll(timeout_ms, min(max_records, self.sizes.pop(0)))


class ThreadsSeen(InMemoryPublisher):
    """Records torch's thread count when each batch's lists are published."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def publish(self, recs: Sequence[UserRecommendation]) -> None:
        self.threads.append(torch.get_num_threads())
        super().publish(recs)


def test_a_batch_of_half_the_batch_size_or_more_uses_every_thread_and_a_smaller_one_one(
    make_worker: MakeWorker, event_record: EventRecord, torch_threads: None
) -> None:
    """Behind, the worker computes on all its threads; keeping up (small batches, where
    latency counts), on one, so that spinning compute threads leave the CPU to Kafka's."""
    records = [event_record(i) for i in range(4 + 1 + 2)]
    seen = ThreadsSeen()
    source = SizedBatches(records, sizes=[4, 1, 2])
    rig = make_worker(source=source, publisher=seen, batch_size=4, threads=2)
    for _ in range(3):
        rig.worker.step()
    assert seen.threads == [2, 1, 2]


def test_without_threads_the_worker_leaves_torchs_setting_alone(
    make_worker: MakeWorker, event_record: EventRecord, torch_threads: None
) -> None:
    torch.set_num_threads(2)
    seen = ThreadsSeen()
    rig = make_worker([event_record(0)], publisher=seen, batch_size=4)
    rig.worker.step()
    assert seen.threads == [2]


class ThresholdSeen(InMemoryPublisher):
    """Records the collector's young threshold when each batch's lists are published."""

    def __init__(self) -> None:
        super().__init__()
        self.thresholds: list[int] = []

    def publish(self, recs: Sequence[UserRecommendation]) -> None:
        self.thresholds.append(gc.get_threshold()[0])
        super().publish(recs)


def test_with_a_backlog_the_worker_collects_young_objects_less_often_and_otherwise_as_before(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    """Full polls (a backlog waits: throughput counts) run under the busy young threshold;
    smaller ones (near capacity or keeping up: latency counts) and empty polls under the one
    the process had."""
    before = gc.get_threshold()
    records = [event_record(i) for i in range(4 + 1 + 2 + 4)]
    seen = ThresholdSeen()
    source = SizedBatches(records, sizes=[4, 1, 2, 4, 0])
    rig = make_worker(
        source=source, publisher=seen, batch_size=4, young_gc=BusyYoungThreshold(54_321)
    )
    try:
        for _ in range(4):
            rig.worker.step()
        assert seen.thresholds == [54_321, before[0], before[0], 54_321]
        rig.worker.step()  # an empty poll: keeping up
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)


class CyclingSource(InMemorySource):
    """A source whose poll ends the way kafka-python 3.0's does when a wait times out: with an
    exception whose traceback forms a reference cycle with the frame it was raised in (and so,
    through ``f_back``, with every frame of the worker above it)."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        try:
            raise TimeoutError("nothing arrived in time")
        except TimeoutError as err:
            kept = err  # this frame -> kept -> err -> traceback -> this frame
        assert kept is not None
        return super().poll(timeout_ms, max_records)


def test_a_polls_exception_cycle_does_not_keep_the_batch_alive(
    make_worker: MakeWorker, event_record: EventRecord
) -> None:
    """Only a full garbage collection frees a reference cycle that lived long enough to reach
    the oldest generation; whatever the cycle's frames reach must not include the batch's
    events, lists and scores, or every batch would live until then (tens of ms to collect)."""

    from consumer.worker import _Batch

    records = [event_record(i, user=f"u{i % 3}", item="abc"[i % 3]) for i in range(6)]
    rig = make_worker(source=CyclingSource(records), batch_size=3)
    gc.collect()
    gc.disable()  # only reference counting frees anything below
    try:
        assert rig.worker.step().consumed == 3
        assert rig.worker.step().consumed == 3
        alive = [o for o in gc.get_objects() if type(o) is _Batch]
    finally:
        gc.enable()
    assert alive == []
