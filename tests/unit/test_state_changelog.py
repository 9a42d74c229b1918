"""Specifications of user state that survives: snapshots, the changelog, restore on assignment,
and re-delivered events as no-ops (DESIGN §5), over in-memory edges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from consumer.changelog import InMemoryStateLog, decode_state, encode_state
from consumer.residency import LocalStateStore, Residency
from consumer.source import InMemorySource, Record
from consumer.transactions import TransactionAborted
from learner.head import HeadConfig
from learner.recommender import Recommender
from learner.user_state import UserSnapshot, UserStateStore, event_id_hash
from serving.exceptions import PublishError

pytestmark = pytest.mark.timeout(60)


def all_snapshots(rec: Recommender, *, ranked: bool = False) -> dict[str, UserSnapshot]:
    """Every user's snapshot. ``ranked`` (the head of the user's last ranked list) is left
    out unless asked for: it follows the shared head, which runs compared here do not always
    share (a fresh worker's head, or one that also learned an aborted batch)."""
    users = list(rec.users._rows)
    snaps = rec.snapshot_users(users)
    return {s.user_id: s if ranked else replace(s, ranked=()) for s in snaps}


def stream(event_record: Callable[..., Record], n: int, users: int = 4) -> list[Record]:
    """``n`` events of ``users`` users over 2 partitions (user k always in partition k % 2)."""
    items = "abcdefgh"
    return [
        event_record(i, partition=(i % users) % 2, user=f"u{i % users}", item=items[i * 3 % 8])
        for i in range(n)
    ]


# -- the record ----------------------------------------------------------------------------


def test_a_state_record_round_trips_exactly() -> None:
    snap = UserSnapshot(
        "ü-1",
        np.arange(4, dtype="<f4").tobytes(),
        1_700_000_000_000,
        3,
        (("a", 1.0, 1_700_000_000_000), ("b", 0.25, 1_700_000_001_000)),
        ("old",),
        (5, -7),
    )
    assert decode_state(encode_state(snap)) == snap


def test_a_state_record_is_the_documented_map_of_arrays_byte_for_byte() -> None:
    """The record's bytes are fixed by the contract (consumer/changelog.py), whatever
    Python types the snapshot holds its sequences in: workers of two versions share the
    changelog."""
    snap = UserSnapshot(
        "u1", b"\x00" * 8, 7, 2, (("a", 1.0, 7000),), ("old",), (42,), "enc", ("b", "c")
    )
    documented = {
        "v": 1,
        "user_id": "u1",
        "vector": b"\x00" * 8,
        "last_ts": 7,
        "count": 2,
        "history": [["a", 1.0, 7000]],
        "consumed": ["old"],
        "seen": [42],
        "encoder": "enc",
        "ranked": ["b", "c"],
    }
    assert encode_state(snap) == msgpack.packb(documented, use_bin_type=True)


@pytest.mark.parametrize(
    "value",
    [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 2}), msgpack.packb({"v": 1})],
    ids=["not-msgpack", "not-a-map", "future-version", "missing-fields"],
)
def test_an_unreadable_state_record_is_a_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="unreadable user-state record"):
        decode_state(value)


# -- snapshots -----------------------------------------------------------------------------


def test_restoring_a_snapshot_into_an_empty_store_gives_the_same_state() -> None:
    a = UserStateStore(dim=3, half_life_s=3600.0, history_len=4, dedup_window=3)
    rows = a.rows_for(["u"] * 6)
    a.fold(
        rows,
        torch.arange(6),
        torch.rand(6, 3),
        torch.ones(6),
        torch.arange(6) * 60_000,
        event_hashes=[event_id_hash(f"e{k}") for k in range(6)],
    )
    names = [f"i{r}" for r in range(6)]
    snap = a.snapshot("u", names.__getitem__)
    b = UserStateStore(dim=3, half_life_s=3600.0, history_len=4, dedup_window=3)
    b.restore(snap, lambda iid: int(iid[1:]))
    assert b.snapshot("u", names.__getitem__) == snap
    assert torch.equal(b.vectors[0], a.vectors[0])
    assert b.consumed("u") == a.consumed("u") == set(range(6))
    assert b.seen([0, 0, 0], [event_id_hash("e5"), event_id_hash("e3"), event_id_hash("e2")]) == [
        True,
        True,
        False,  # older than the window of 3
    ]


def test_a_removed_users_row_is_reused_empty() -> None:
    store = UserStateStore(dim=2, half_life_s=3600.0)
    rows = store.rows_for(["a", "b"])
    store.fold(rows, torch.tensor([0, 1]), torch.ones(2, 2), torch.ones(2), torch.zeros(2))
    assert store.remove(["a", "nobody"]) == 1
    assert "a" not in store and len(store) == 1
    (row,) = store.rows_for(["c"]).tolist()
    assert row == int(rows[0])
    assert store.event_count("c") == 0 and store.consumed("c") == set()
    assert float(store.vectors[row].abs().sum()) == 0.0


# -- re-delivered events ---------------------------------------------------------------------


def test_an_event_learned_twice_changes_nothing_the_second_time(
    make_recommender: Callable[..., Recommender], make_event: Callable[..., Any]
) -> None:
    rec = make_recommender()
    first = [make_event("u1", "a"), make_event("u1", "b"), make_event("u2", "c")]
    rec.learn(first)
    before = all_snapshots(rec)
    report = rec.learn([first[1], first[2]])
    assert report.duplicates == 2 and report.events == 0
    assert all_snapshots(rec) == before


def test_the_same_event_id_twice_in_one_batch_counts_once(
    make_recommender: Callable[..., Recommender], make_event: Callable[..., Any]
) -> None:
    rec = make_recommender()
    ev = make_event("u1", "a")
    report = rec.learn([ev, ev])
    assert (report.events, report.duplicates) == (1, 1)
    assert rec.users.event_count("u1") == 1


# -- the worker and the changelog ------------------------------------------------------------


def test_every_processed_users_state_is_in_the_changelog_before_the_commit(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    state = InMemoryStateLog()
    rig = make_worker(stream(event_record, 12), state_log=state, batch_size=5)
    rig.worker.run(until=lambda: rig.source.exhausted)
    logged = {uid: decode_state(v) for p in state.partitions.values() for uid, v in p.items()}
    assert logged == all_snapshots(rig.worker.recommender, ranked=True)
    assert set(state.partitions[0]) == {"u0", "u2"} and set(state.partitions[1]) == {"u1", "u3"}
    assert rig.source.committed == {("freshrec.events", 0): 11, ("freshrec.events", 1): 12}
    assert rig.sample("freshrec_state_records_written_total") == state.writes


def test_a_new_worker_restores_its_partitions_users_identically(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    state = InMemoryStateLog()
    first = make_worker(stream(event_record, 20), state_log=state, batch_size=7)
    first.worker.run(until=lambda: first.source.exhausted)
    second = make_worker([], state_log=state)
    second.worker.on_assign([("freshrec.events", 0), ("freshrec.events", 1)])
    second.worker.step()
    restored = all_snapshots(second.worker.recommender, ranked=True)
    assert restored == all_snapshots(first.worker.recommender, ranked=True)
    assert all(snap.ranked for snap in restored.values())  # hard negatives come back too
    assert second.sample("freshrec_state_restored_users_total") == 4
    assert second.sample("freshrec_state_restore_seconds_count") == 2


def test_records_delivered_again_after_a_restart_are_no_ops(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    """A crash after the state was written but before the commit replays the batch."""
    records = stream(event_record, 10)
    state = InMemoryStateLog()
    first = make_worker(records, state_log=state, batch_size=10)
    first.worker.run(until=lambda: first.source.exhausted)
    again = make_worker(records[4:], state_log=state, batch_size=10)
    again.worker.on_assign([("freshrec.events", 0), ("freshrec.events", 1)])
    again.worker.run(until=lambda: again.source.exhausted)
    assert all_snapshots(again.worker.recommender) == all_snapshots(first.worker.recommender)
    assert again.sample("freshrec_events_duplicate_total") == 6
    assert again.sample("freshrec_events_processed_total") == 6  # processed, as no-ops


def test_a_revoked_partitions_users_are_let_go_and_come_back_on_assignment(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    state = InMemoryStateLog()
    rig = make_worker(stream(event_record, 8), state_log=state, batch_size=8)
    rig.worker.run(until=lambda: rig.source.exhausted)
    before = all_snapshots(rig.worker.recommender)
    rig.worker.on_revoke([("freshrec.events", 1)])
    rig.worker.step()
    assert set(rig.worker.recommender.users._rows) == {"u0", "u2"}
    rig.worker.on_assign([("freshrec.events", 1)])
    rig.worker.step()
    assert all_snapshots(rig.worker.recommender) == before


def test_without_a_changelog_a_revoke_keeps_users_in_memory(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    rig = make_worker(stream(event_record, 8), batch_size=8)
    rig.worker.run(until=lambda: rig.source.exhausted)
    rig.worker.on_revoke([("freshrec.events", 1)])
    rig.worker.step()
    assert len(rig.worker.recommender.users) == 4


class FailingStateLog(InMemoryStateLog):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def flush(self) -> None:
        if self.failures:
            self.failures -= 1
            raise PublishError("broker gone")


def test_offsets_wait_for_the_state_to_be_written(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    source = InMemorySource(stream(event_record, 4))
    state = FailingStateLog(failures=2)
    commits: list[int] = []
    real_commit = source.commit
    source.commit = lambda offsets: (commits.append(state.failures), real_commit(offsets))  # type: ignore[method-assign]
    rig = make_worker(source=source, state_log=state, batch_size=4, max_backoff_s=0.01)
    rig.worker.step()
    assert commits == [0]  # one commit, after the last failure
    assert set(state.partitions[0]) == {"u0", "u2"}


# -- exactly-once: a rolled-back batch is redone and counts once -----------------------------


class StagedStateLog(InMemoryStateLog):
    """A changelog whose writes become visible only when the transaction commits."""

    def __init__(self) -> None:
        super().__init__()
        self.staged: list[tuple[UserSnapshot, int]] = []

    def write(self, snapshots: Any, partitions: Any) -> None:
        self.staged.extend(zip(snapshots, partitions, strict=True))

    def settle(self, commit: bool) -> None:
        if commit:
            super().write([s for s, _ in self.staged], [p for _, p in self.staged])
        self.staged = []


class FlakyTransactions:
    """A committer whose first ``failures`` commits are aborted by the 'broker'."""

    transactional = True

    def __init__(self, source: InMemorySource, state: StagedStateLog, failures: int) -> None:
        self.source, self.state, self.failures = source, state, failures

    def commit(self, offsets: Any) -> None:
        if self.failures:
            self.failures -= 1
            self.state.settle(commit=False)
            raise TransactionAborted("injected")
        self.state.settle(commit=True)
        self.source.commit(offsets)

    def abort(self) -> None:
        self.state.settle(commit=False)


def test_a_rolled_back_batch_is_redone_from_committed_state_and_counted_once(
    make_worker: Callable[..., Any],
    make_recommender: Callable[..., Recommender],
    event_record: Callable[..., Record],
) -> None:
    """User state is rolled back exactly. (The shared head is not: it learned the aborted
    batch too, so item offsets are switched off here to make vectors comparable.)"""
    records = stream(event_record, 12)
    frozen_items = HeadConfig(item_lr=0.0)
    plain = make_worker(
        records,
        state_log=InMemoryStateLog(),
        batch_size=5,
        recommender=make_recommender(head=frozen_items),
    )
    plain.worker.run(until=lambda: plain.source.exhausted)

    state = StagedStateLog()
    source = InMemorySource(records)
    rig = make_worker(
        source=source,
        state_log=state,
        batch_size=5,
        committer=FlakyTransactions(source, state, failures=2),
        recommender=make_recommender(head=frozen_items),
    )
    rig.worker.run(until=lambda: rig.source.exhausted)
    assert all_snapshots(rig.worker.recommender) == all_snapshots(plain.worker.recommender)
    assert rig.sample("freshrec_transactions_aborted_total") == 2
    assert rig.sample("freshrec_events_processed_total") == 12
    assert rig.sample("freshrec_events_duplicate_total") == 0
    assert source.committed == plain.source.committed


# -- bounded memory: users beyond the bound wait in the local store ---------------------------


def everyone(rig: Any, *, ranked: bool = False) -> dict[str, UserSnapshot]:
    """Every user's state, in memory or waiting in the local store (``ranked``: as in
    :func:`all_snapshots`)."""
    out = all_snapshots(rig.worker.recommender, ranked=ranked)
    stored = rig.worker.residency.store.get([f"u{k}" for k in range(100)])
    for snap, _ in stored:
        if snap.user_id not in out:
            out[snap.user_id] = snap if ranked else replace(snap, ranked=())
    return out


def bounded_rig(make_worker: Callable[..., Any], records: list[Record], **kw: Any) -> Any:
    rig = make_worker(records, state_log=kw.pop("state_log", InMemoryStateLog()), **kw)
    rig.worker.residency = Residency(
        rig.worker.recommender, LocalStateStore(":memory:"), max_users=kw.get("max_users", 3)
    )
    return rig


def test_memory_holds_at_most_the_bound_and_no_users_state_is_lost(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    records = stream(event_record, 60, users=10)
    plain = make_worker(records, state_log=InMemoryStateLog(), batch_size=4)
    plain.worker.run(until=lambda: plain.source.exhausted)

    rig = bounded_rig(make_worker, records, batch_size=4)
    sizes = []
    while not rig.source.exhausted:
        rig.worker.step()
        sizes.append(len(rig.worker.recommender.users))
    assert max(sizes) <= 3 + 4  # the bound, plus a batch's users until it is committed
    assert sizes[-1] <= 3
    # Evicted users come back with their last list too, so they learn exactly as if they had
    # stayed: the same negatives, the same head, the same lists.
    assert everyone(rig, ranked=True) == all_snapshots(plain.worker.recommender, ranked=True)
    assert rig.sample("freshrec_users_evicted_total") > 0
    assert rig.sample("freshrec_users_loaded_total") > 0


def test_with_a_bound_restored_users_wait_in_the_store_until_their_next_event(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    state = InMemoryStateLog()
    first = make_worker(stream(event_record, 20), state_log=state, batch_size=20)
    first.worker.run(until=lambda: first.source.exhausted)
    rig = bounded_rig(make_worker, [], state_log=state)
    rig.worker.on_assign([("freshrec.events", 0), ("freshrec.events", 1)])
    rig.worker.step()
    assert len(rig.worker.recommender.users) == 0
    assert everyone(rig) == all_snapshots(first.worker.recommender)


def test_idle_users_leave_memory_after_the_ttl(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    now = [0.0]
    rig = make_worker(stream(event_record, 8), state_log=InMemoryStateLog(), batch_size=4)
    rig.worker.residency = Residency(
        rig.worker.recommender,
        LocalStateStore(":memory:"),
        max_users=100,
        idle_ttl_s=60.0,
        clock=lambda: now[0],
    )
    rig.worker.step()
    assert len(rig.worker.recommender.users) == 4
    now[0] = 61.0
    rig.worker.step()  # this batch's users were just used; nobody else is left
    now[0] = 200.0
    rig.worker.residency.evict()
    assert len(rig.worker.recommender.users) == 0
    assert len(rig.worker.residency.store) == 4
