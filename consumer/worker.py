"""The worker loop: poll a micro-batch, decode, learn, rank, publish, then commit.

Everything it talks to is injected, so the same loop runs over Kafka (``build_worker``) and over
in-memory sources and publishers (unit tests, ``freshrec evaluate``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from prometheus_client import Counter

from consumer.changelog import StateLog
from consumer.codec import Limits, decode_event, decode_item, decode_user
from consumer.dlq import DeadLetterQueue
from consumer.exceptions import DecodeError, SourceError
from consumer.logs import LogSampler
from consumer.model_sync import ModelSync
from consumer.residency import Residency
from consumer.source import Record, Source, TopicPartitionKey
from consumer.transactions import Committer, SourceCommitter, TransactionAborted
from learner.ann import set_threads as set_ann_threads
from learner.explain import Explanation, explain
from learner.online_metrics import HitRateTracker
from learner.recommender import Recommender
from learner.types import (
    Event,
    Item,
    ItemDeletion,
    ProfileDeletion,
    UserProfile,
    UserRecommendation,
)
from serving.exceptions import PublishError
from serving.gcpause import BusyYoungThreshold
from serving.metrics import WorkerMetrics
from serving.publisher import Publisher

__all__ = ["ItemUpdates", "StepReport", "Worker"]

# A decoded record of a compacted feed (items, profiles): an upsert or a deletion.
_Feed = TypeVar("_Feed")

log = logging.getLogger(__name__)

UNKNOWN_ITEM = "unknown_item"
# Dead letters are logged as a sample: the first of each reason, then one per this many seconds.
DLQ_LOG_INTERVAL_S = 10.0


class ItemUpdates(Protocol):
    """A compacted feed read whole: records of the items topic (or of the users topic)."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]: ...

    def read_to_end(self, max_records: int = 5000) -> Iterable[list[Record]]: ...


@dataclass(frozen=True)
class StepReport:
    """What one ``step`` did."""

    consumed: int = 0
    processed: int = 0
    rejected: int = 0
    published: int = 0
    item_changes: int = 0

    def __add__(self, other: StepReport) -> StepReport:
        return StepReport(
            self.consumed + other.consumed,
            self.processed + other.processed,
            self.rejected + other.rejected,
            self.published + other.published,
            self.item_changes + other.item_changes,
        )


@dataclass
class _Batch:
    events: list[Event]
    records: list[Record]  # the record of each event, same order
    rejected: int
    offsets: dict[TopicPartitionKey, int]
    reasons: list[str] = field(default_factory=list)  # of the rejected records
    duplicates: int = 0

    def partition_of_users(self) -> dict[str, int]:
        """The partition each user's events of this batch came from."""
        return {
            ev.user_id: rec.partition for ev, rec in zip(self.events, self.records, strict=True)
        }


class Worker:
    """Turns micro-batches of event records into published recommendations.

    Examples
    --------
    See ``tests/unit/test_worker.py``; in short::

        worker = Worker(source=src, recommender=rec, publisher=pub, dlq=dlq)
        worker.run(max_batches=10)
    """

    def __init__(
        self,
        *,
        source: Source,
        recommender: Recommender,
        publisher: Publisher,
        dlq: DeadLetterQueue,
        metrics: WorkerMetrics | None = None,
        items: ItemUpdates | None = None,
        profiles: ItemUpdates | None = None,
        batch_size: int = 500,
        poll_timeout_ms: int = 500,
        top_k: int = 10,
        limits: Limits | None = None,
        on_published: Callable[[Sequence[UserRecommendation]], None] | None = None,
        state_log: StateLog | None = None,
        committer: Committer | None = None,
        max_backoff_s: float = 10.0,
        stall_after_s: float = 60.0,
        replace_producer: Callable[[], None] | None = None,
        residency: Residency | None = None,
        model_sync: ModelSync | None = None,
        threads: int = 0,
        young_gc: BusyYoungThreshold | None = None,
    ) -> None:
        self.source = source
        self.recommender = recommender
        self.publisher = publisher
        self.dlq = dlq
        self.metrics = metrics or WorkerMetrics()
        self.items = items
        self.profiles = profiles
        self.batch_size = batch_size
        # Compute threads for a batch at least half of batch_size (0: leave torch's setting);
        # smaller batches run on one (see _use_threads).
        self.threads = threads
        # The collector's young threshold while a backlog waits (None: left alone).
        self.young_gc = young_gc
        self.poll_timeout_ms = poll_timeout_ms
        self.top_k = top_k
        self.limits = limits or Limits()
        self.on_published = on_published
        self.state_log = state_log
        self.committer = committer or SourceCommitter(source)
        self.max_backoff_s = max_backoff_s
        self.replace_producer = replace_producer
        self.residency = residency
        self.model_sync = model_sync
        self.stall_after_s = stall_after_s
        self._dlq_log = LogSampler(DLQ_LOG_INTERVAL_S)
        # Per partition: when a batch of it was last committed (or it had no lag), for
        # freshrec_partition_stalled.
        self._progress: dict[TopicPartitionKey, float] = {}
        # Rebalance news from the consumer's listener, applied by the loop between polls (the
        # listener must not block: it runs on the client's event loop, heartbeats included).
        self._rebalances: list[tuple[str, list[TopicPartitionKey]]] = []
        self._rebalance_lock = threading.Lock()
        # The last list sent to each user (for the online hit rate) is per-user memory too.
        self.hit_rate = (
            HitRateTracker(max_users=min(1_000_000, residency.max_users))
            if residency is not None
            else HitRateTracker()
        )
        self._stop = threading.Event()
        # Held while a batch is handled: readers from other threads (the /explain endpoint)
        # see the model between batches, never halfway through one.
        self.model_lock = threading.Lock()
        self.ready = False
        self.last_step_monotonic = time.monotonic()
        self.batches = 0
        self.totals = StepReport()

    # -- lifecycle -----------------------------------------------------------------------

    def bootstrap(self) -> int:
        """Load the whole catalog from the items feed, and every profile from the users feed,
        before the first event is handled."""
        changes = 0
        if self.items is not None:
            for records in self.items.read_to_end():
                changes += self._apply_items(records)
        if self.profiles is not None:
            for records in self.profiles.read_to_end():
                changes += self._apply_profiles(records)
            log.info("profiles loaded: %d users", len(self.recommender.profiles))
        self.metrics.catalog_items.set(len(self.recommender.items))
        if self.model_sync is not None:
            self.metrics.model_peers.set(self.model_sync.start())
        self.metrics.set_model_version(self.recommender.model_version)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("catalog loaded: %d live items", len(self.recommender.items))
        return changes

    def on_assign(self, tps: Sequence[TopicPartitionKey]) -> None:
        """Listener hook: restore these partitions' users before their first record."""
        with self._rebalance_lock:
            self._rebalances.append(("assign", list(tps)))

    def on_revoke(self, tps: Sequence[TopicPartitionKey]) -> None:
        """Listener hook: forget these partitions' users (their new owner restores them).
        Every processed batch was committed and its state written before this can happen."""
        with self._rebalance_lock:
            self._rebalances.append(("revoke", list(tps)))

    def _apply_rebalances(self) -> None:
        with self._rebalance_lock:
            news, self._rebalances = self._rebalances, []
        if self.state_log is None:
            return  # without a changelog, users' state stays where it is
        users = self.recommender.users
        for kind, tps in news:
            partitions = sorted({p for _, p in tps})
            if kind == "revoke":
                for tp in tps:
                    self._progress.pop(tp, None)
                dropped = users.remove(users.users_of_shards(partitions))
                if self.residency is not None:
                    self.residency.forget(partitions)
                log.info("revoked partitions %s: %d users let go", partitions, dropped)
            else:
                self.restore(partitions)

    def restore(self, partitions: Sequence[int]) -> int:
        """Rebuild the users of ``partitions`` from the state changelog; returns how many."""
        assert self.state_log is not None
        total = 0
        start = time.perf_counter()
        for partition, snapshots in self.state_log.restore(partitions):
            if self.residency is not None:  # to the local store; loaded on their next event
                restored = self.residency.restore(partition, snapshots)
            else:
                restored = self.recommender.restore_users(snapshots, shard=partition)
            seconds = time.perf_counter() - start
            self.metrics.state_restore_seconds.observe(seconds)
            self.metrics.state_restored_users.inc(restored)
            log.info("partition %d: %d users restored in %.2fs", partition, restored, seconds)
            total += restored
            start = time.perf_counter()
        self.metrics.users_in_state.set(len(self.recommender.users))
        return total

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(
        self, *, max_batches: int | None = None, until: Callable[[], bool] | None = None
    ) -> int:
        """Step until stopped, ``max_batches`` non-empty batches are done, or ``until()``.

        Empty polls do not count towards ``max_batches``: over a source that has run dry, pass
        ``until`` (for example ``until=lambda: source.exhausted``) as well.
        """
        done = 0
        while not self._stop.is_set():
            if max_batches is not None and done >= max_batches:
                break
            if until is not None and until():
                break
            with self.model_lock:
                report = self.step()
            if report.consumed:
                done += 1
        return done

    def explain(self, user_id: str, item_id: str, top: int = 5) -> Explanation:
        """The score of ``item_id`` for ``user_id`` taken apart (``learner.explain``), on the
        model as it is between batches; safe to call from another thread. A user waiting in
        the local store is loaded first, as their next event would."""
        with self.model_lock:
            if self.residency is not None and user_id not in self.recommender.users:
                self.metrics.users_loaded.inc(self.residency.admit({user_id: -1}))
            return explain(self.recommender, user_id, item_id, top)

    # -- one micro-batch -----------------------------------------------------------------

    def step(self) -> StepReport:
        """Handle one poll: items first, then events end to end, committing last.

        The polls and the batch's work are separate calls on purpose. kafka-python 3.0 ends a
        poll that found nothing with an exception whose traceback forms a reference cycle
        with the frames it was raised under, and a frame object that outlives its call keeps
        the locals it ended with. Were the batch handled in this frame, every batch's events,
        lists and scores would stay alive until a full garbage collection (tens of ms each).
        """
        self.last_step_monotonic = time.monotonic()
        item_changes = self._poll_items() + self._poll_profiles()
        self._sync_model()
        return self._handle(self._poll_events(), item_changes)

    def _poll_events(self) -> list[Record]:
        """The next records of the events topic, after any rebalance they brought is applied."""
        records = self.source.poll(self.poll_timeout_ms, self.batch_size)
        if self._rebalances:
            with self._timed("restore"):
                self._apply_rebalances()
        self._update_lag()
        return records

    def _handle(self, records: list[Record], item_changes: int) -> StepReport:
        """Decode, learn, rank, deliver and commit one batch of event records."""
        self._adapt_to_load(len(records))
        if not records:
            return StepReport(item_changes=item_changes)
        try:
            with self._timed("decode"):
                batch = self._decode(records)
            with self._timed("learn"):
                self._learn(batch)
            with self._timed("rank"):
                recs = self._rank(batch.events)
            self._deliver(recs, batch)
        except Exception as err:
            if not self.committer.transactional:
                raise  # at-least-once: the batch is redone by whoever restarts from the commit
            self._roll_back(records, err)
            return StepReport(item_changes=item_changes)
        self._count(records, batch, recs)
        report = StepReport(
            len(records), len(batch.events), batch.rejected, len(recs), item_changes
        )
        self.totals = self.totals + report
        return report

    def _adapt_to_load(self, n_records: int) -> None:
        """Tune for throughput when a poll brings at least half ``batch_size`` (the worker is
        behind: throughput counts), for latency when it brings less (it keeps up): compute
        threads (:meth:`_use_threads`). The garbage collector's young threshold
        (``serving.gcpause.BusyYoungThreshold``) goes up only for a full poll, when records
        are waiting beyond this batch and the backlog sets freshness: near capacity (polls of
        150-360 of 500 at 2,000 events/s on the 2-core VM), switching it at half a batch
        doubled p99 freshness (median of 3 runs 652 -> 1,336 ms)."""
        self._use_threads(2 * n_records >= self.batch_size)
        if self.young_gc is not None:
            self.young_gc.update(n_records >= self.batch_size)

    def _use_threads(self, behind: bool) -> None:
        """All ``threads`` when ``behind``, one otherwise. On a small machine shared with the
        Kafka client's threads (and here the broker), OpenMP's threads spinning between a
        small batch's many short operations take the CPU those need: on two cores at 500
        events/s, p99 freshness was 790 ms with two threads for every batch and about 300 ms
        with one, while full batches run 1.2x faster on two."""
        if self.threads <= 1:
            return
        want = self.threads if behind else 1
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            set_ann_threads(want)

    def _deliver(self, recs: Sequence[UserRecommendation], batch: _Batch) -> None:
        """Publish, write state, commit. At-least-once, a delivery that fails (broker down,
        output topic refusing writes) is retried with growing pauses while the source holds
        every partition: memory stays at one batch, the worker stays in its group, and nothing
        is committed before it is delivered. Exactly-once, the failure rolls the batch back."""
        attempt = 0
        while True:
            try:
                with self._timed("publish"):
                    self.publisher.publish(recs)
                with self._timed("state"):
                    self._write_state(batch)
                with self._timed("flush"):
                    self._flush()
                break
            except PublishError as err:
                if self.committer.transactional or self.stopping:
                    raise
                attempt += 1
                self._hold(err, attempt)
        if attempt:
            self.source.resume()
            self.metrics.backpressure.set(0)
            log.info("delivered after %d retries; taking records again", attempt)
        with self._timed("commit"):
            try:
                self.committer.commit(batch.offsets)
            except SourceError as err:
                if self.committer.transactional:
                    raise
                # The group moved partitions meanwhile: their new owner redoes the batch from
                # the last commit, and its users' state records make the redo a no-op.
                log.warning("commit refused, the new owners will redo the batch: %s", err)

    def _hold(self, err: Exception, attempt: int) -> None:
        delay_s = min(self.max_backoff_s, 0.5 * 2 ** (attempt - 1))
        log.warning(
            "delivery failed (%s); retry %d in %.1fs, partitions paused", err, attempt, delay_s
        )
        self.metrics.backpressure.set(1)
        self.metrics.delivery_retries.inc()
        if self.replace_producer is not None:
            # A producer that failed may be stuck in a fatal state: retry on a fresh one.
            self.replace_producer()
        deadline = time.monotonic() + delay_s
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self.source.hold(int(min(left, 0.5) * 1000))
            self.last_step_monotonic = time.monotonic()  # alive, if not progressing
            self._update_lag()

    def _roll_back(self, records: Sequence[Record], err: Exception) -> None:
        """Exactly-once: the batch's transaction is aborted, so its effects on user state are
        undone too (its partitions' users reloaded from the committed changelog) and the
        source goes back to the committed offsets to redo it."""
        if not isinstance(err, TransactionAborted):
            log.warning("batch failed (%s): aborting its transaction", err)
            self.committer.abort()
        self.metrics.transactions_aborted.inc()
        partitions = sorted({r.partition for r in records})
        users = self.recommender.users
        users.remove(users.users_of_shards(partitions))
        if self.residency is not None:
            self.residency.forget(partitions)
        if self.state_log is not None:
            self.restore(partitions)
        self.source.rewind()

    def _count(
        self, records: Sequence[Record], batch: _Batch, recs: Sequence[UserRecommendation]
    ) -> None:
        """Metrics of a committed batch (an aborted one counts nowhere: it is redone)."""
        self.batches += 1
        now = time.monotonic()
        for tp in batch.offsets:
            self._progress[tp] = now
        self.metrics.events_consumed.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        for reason in batch.reasons:
            self.metrics.events_rejected.labels(reason=reason).inc()
        if batch.duplicates:
            self.metrics.events_duplicate.inc(batch.duplicates)
        delivered = time.time()
        for rec in batch.records:
            if rec.timestamp_ms:
                self.metrics.event_to_publish_seconds.observe(
                    max(0.0, delivered - rec.timestamp_ms / 1000.0)
                )
        for sent in recs:
            self.hit_rate.remember(sent.user_id, [it.item_id for it in sent.items])
        self.metrics.recommendations_published.inc(len(recs))
        self.metrics.events_processed.inc(len(batch.events))
        self.metrics.set_model_version(self.recommender.model_version)
        if self.on_published is not None:
            self.on_published(recs)
        if self.residency is not None:
            self.metrics.users_evicted.inc(self.residency.evict())
            self.metrics.users_in_state.set(len(self.recommender.users))

    def _sync_model(self) -> None:
        """Average the shared head with the other workers' now and then (consumer.model_sync);
        a failed publish only delays the next one."""
        if self.model_sync is None:
            return
        try:
            if self.model_sync.tick():
                self.metrics.model_syncs.inc()
                self.metrics.model_peers.set(len(self.model_sync.peers))
        except PublishError as err:
            log.warning("model snapshot not published: %s", err)

    def _poll_items(self) -> int:
        if self.items is None:
            return 0
        records = self.items.poll(0, 5000)
        if not records:
            return 0
        with self._timed("items"):
            changes = self._apply_items(records)
            self._commit_feed_dead_letters(len(records), "item")
            return changes

    def _poll_profiles(self) -> int:
        if self.profiles is None:
            return 0
        records = self.profiles.poll(0, 5000)
        if not records:
            return 0
        with self._timed("profiles"):
            changes = self._apply_profiles(records)
            self._commit_feed_dead_letters(len(records), "profile")
            return changes

    def _commit_feed_dead_letters(self, n_records: int, what: str) -> None:
        if self.committer.transactional:
            # Dead letters of bad feed records are this step's only output: commit them now
            # rather than hold a transaction open until the next batch of events.
            try:
                self.committer.commit({})
            except TransactionAborted as err:
                log.error("dead letters of %d %s records lost: %s", n_records, what, err)

    def _latest(
        self,
        records: Sequence[Record],
        decode: Callable[[bytes | None, bytes | None, Limits], _Feed],
        key: Callable[[_Feed], str],
        rejected: Counter,
        what: str,
    ) -> list[_Feed]:
        """A feed's records decoded, the last one per key only, in the order of those last
        ones; a record that does not decode goes to the DLQ and counts in ``rejected``."""
        latest: dict[str, _Feed] = {}
        for rec in records:
            try:
                decoded = decode(rec.key, rec.value, self.limits)
            except DecodeError as err:
                self.dlq.send(rec, err.reason, err.detail)
                rejected.labels(reason=err.reason).inc()
                log.warning("bad %s record %s: %s", what, rec.source, err)
                continue
            latest.pop(key(decoded), None)
            latest[key(decoded)] = decoded
        return list(latest.values())

    def _apply_profiles(self, records: Sequence[Record]) -> int:
        """Profile upserts and tombstones, in order; a bad profile record goes to the DLQ."""
        latest = self._latest(
            records, decode_user, lambda p: p.user_id, self.metrics.profiles_rejected, "profile"
        )
        upserts = [p for p in latest if isinstance(p, UserProfile)]
        deletions = [p.user_id for p in latest if isinstance(p, ProfileDeletion)]
        stored = self.recommender.upsert_profiles(upserts)
        removed = self.recommender.delete_profiles(deletions)
        self.metrics.profiles_updated.labels(op="upsert").inc(stored)
        self.metrics.profiles_updated.labels(op="delete").inc(removed)
        self.metrics.profiles.set(len(self.recommender.profiles))
        return stored + removed

    def _apply_items(self, records: Sequence[Record]) -> int:
        """Upserts and tombstones, in order; a bad item record goes to the DLQ."""
        latest = self._latest(
            records, decode_item, lambda it: it.item_id, self.metrics.items_rejected, "item"
        )
        upserts = [it for it in latest if isinstance(it, Item)]
        deletions = [it.item_id for it in latest if isinstance(it, ItemDeletion)]
        report = self.recommender.upsert_items_report(upserts)
        stored = report.stored
        for item_id, reason in report.bad_images:
            # The item itself is valid and ranks by its text: stored, not dead-lettered.
            self.metrics.item_images_invalid.inc()
            log.warning(
                "item %r stored without its image: %s",
                item_id[:64],
                reason,
                extra={"event": "bad_image", "item_id": item_id[:64], "reason": reason},
            )
        removed = self.recommender.delete_items(deletions)
        self.metrics.items_updated.labels(op="upsert").inc(stored)
        self.metrics.items_updated.labels(op="delete").inc(removed)
        self.metrics.catalog_items.set(len(self.recommender.items))
        if stored or removed:
            log.info("catalog: %d items stored, %d deleted", stored, removed)
        return stored + removed

    def _decode(self, records: Sequence[Record]) -> _Batch:
        events: list[Event] = []
        kept: list[Record] = []
        offsets: dict[TopicPartitionKey, int] = {}
        reasons: list[str] = []
        now_ms = int(time.time() * 1000)
        for rec in records:
            tp = (rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, -1), rec.offset)
            try:
                event = decode_event(rec.value, self.limits, now_ms)
            except DecodeError as err:
                self._reject(rec, err.reason, err.detail)
                reasons.append(err.reason)
                continue
            if event.item_id not in self.recommender.items:
                self._reject(
                    rec, UNKNOWN_ITEM, f"item {event.item_id[:64]!r} is not in the catalog"
                )
                reasons.append(UNKNOWN_ITEM)
                continue
            events.append(event)
            kept.append(rec)
        return _Batch(events, kept, len(reasons), offsets, reasons)

    def _reject(self, record: Record, reason: str, detail: str) -> None:
        self.dlq.send(record, reason, detail)
        held = self._dlq_log.admit(reason)
        if held is not None:  # a sample per reason: the metrics count every one
            log.warning(
                "dead-lettered %s (%s): %s%s",
                record.source,
                reason,
                detail,
                f" [{held} more with this reason since the last line]" if held else "",
                extra={"event": "dlq", "reason": reason, "source": record.source, "held": held},
            )

    def _learn(self, batch: _Batch) -> None:
        if not batch.events:
            return
        if self.residency is not None:
            loaded = self.residency.admit(batch.partition_of_users())
            self.metrics.users_loaded.inc(loaded)
        update = self.hit_rate.observe((ev.user_id, ev.item_id) for ev in batch.events)
        if update.trials:
            self.metrics.online_hit_trials.inc(update.trials)
            self.metrics.online_hits.inc(update.hits)
            self.metrics.online_hit_rate.set(self.hit_rate.rate)
        if update.drift:
            self.metrics.drift_detected.inc()
            log.warning(
                "drift detected in the online hit rate (now %.3f)",
                self.hit_rate.rate,
                extra={"event": "drift", "hit_rate": round(self.hit_rate.rate, 4)},
            )
        report = self.recommender.learn(batch.events)
        batch.duplicates = report.duplicates
        # Each user is tagged with its partition, so a revoke or a rollback finds its users.
        partition_of = batch.partition_of_users()
        users = self.recommender.users
        users.set_shard(users.rows_for(list(partition_of)), list(partition_of.values()))
        if report.trained_pairs:
            self.metrics.head_steps.inc()
            self.metrics.train_loss.set(report.loss)
        self.metrics.users_in_state.set(len(self.recommender.users))

    def _rank(self, events: Sequence[Event]) -> list[UserRecommendation]:
        users = list(dict.fromkeys(ev.user_id for ev in events))  # one list per user per batch
        return self.recommender.recommend(users, self.top_k)

    def _write_state(self, batch: _Batch) -> None:
        """Send the batch's users' new state to the changelog (``_flush`` waits for it): the
        commit that follows must never get ahead of the state it implies."""
        if self.state_log is None or not batch.events:
            return
        partition_of = batch.partition_of_users()
        snapshots = self.recommender.snapshot_users(list(partition_of))
        self.state_log.write(snapshots, [partition_of[s.user_id] for s in snapshots])
        self.metrics.state_records_written.inc(len(snapshots))

    def _flush(self) -> None:
        """Wait until the batch's lists, dead letters and state records are all delivered.
        They share one producer, so this is one wait for the broker's acknowledgements, not
        one per kind; each kind then checks its own sends."""
        self.publisher.flush()
        self.dlq.flush()
        if self.state_log is not None:
            self.state_log.flush()

    def _update_lag(self) -> None:
        """Lag per partition, and whether it is stalled: records waiting (lag above 0) but no
        batch of that partition committed for ``stall_after_s``."""
        now = time.monotonic()
        for tp, lag in self.source.lag().items():
            topic, partition = tp[0], str(tp[1])
            self.metrics.consumer_lag.labels(topic=topic, partition=partition).set(lag)
            if lag == 0 or tp not in self._progress:
                self._progress[tp] = now
            stalled = lag > 0 and now - self._progress[tp] >= self.stall_after_s
            self.metrics.partition_stalled.labels(topic=topic, partition=partition).set(stalled)

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_seconds.labels(stage=stage).observe(time.perf_counter() - start)
