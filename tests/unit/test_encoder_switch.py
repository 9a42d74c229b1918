"""Specifications of switching a worker to another encoder (a restart with a new
``--encoder-dir``): every user's history and counts come back from the changelog, vectors are
rebuilt in the new encoder's space, and lists carry the new model_version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from consumer.changelog import InMemoryStateLog, decode_state
from consumer.source import Record
from learner.recommender import Recommender
from learner.user_state import UserSnapshot
from tests.unit.conftest import BagOfWordsEncoder, make_items

pytestmark = pytest.mark.timeout(60)

PARTITIONS = [("freshrec.events", 0), ("freshrec.events", 1)]


class ReversedBag(BagOfWordsEncoder):
    """Another encoder of the same size: the bag-of-words space with its axes reversed, so
    a vector from the old space means something else here, and the right one is known."""

    name = "bag-of-words-reversed"

    def encode(self, texts: Sequence[str]) -> Tensor:
        return super().encode(texts).flip(1)


def stream(event_record: Callable[..., Record], n: int, start: int = 0) -> list[Record]:
    items = "abcdefgh"
    return [
        event_record(i, partition=(i % 4) % 2, user=f"u{i % 4}", item=items[i * 3 % 8])
        for i in range(start, start + n)
    ]


def without_vector(snap: UserSnapshot) -> tuple[Any, ...]:
    return (snap.user_id, snap.last_ts_ms, snap.count, snap.history, snap.consumed, snap.seen)


def users_of(rec: Recommender) -> dict[str, UserSnapshot]:
    return {s.user_id: s for s in rec.snapshot_users(list(rec.users._rows))}


def test_a_worker_restarted_with_another_encoder_keeps_every_user_and_lists_its_version(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    state = InMemoryStateLog()
    old = make_worker(stream(event_record, 20), state_log=state, batch_size=7)
    old.worker.run(until=lambda: old.source.exhausted)
    before = users_of(old.worker.recommender)
    assert {s.encoder for s in before.values()} == {"bag-of-words"}

    new_rec = Recommender(ReversedBag())
    new_rec.upsert_items(make_items())
    new = make_worker(stream(event_record, 8, start=20), state_log=state, recommender=new_rec)
    new.worker.on_assign(PARTITIONS)
    new.worker.run(until=lambda: new.source.exhausted)  # restores first, then learns

    assert new_rec.rederived_users == 4
    after = users_of(new_rec)
    for uid, snap in before.items():
        again = after[uid]
        assert again.count == snap.count + 2
        assert again.history[: len(snap.history)] == snap.history
        assert again.encoder == "bag-of-words-reversed"
    assert {r.model_version.split("/")[0] for r in old.publisher.published} == {"bag-of-words"}
    lists = new.publisher.published
    assert {r.user_id for r in lists} == set(before)
    assert {r.model_version.split("/")[0] for r in lists} == {"bag-of-words-reversed"}


def test_restored_vectors_are_rebuilt_in_the_new_encoders_space(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    """With every event in the history ring, the rebuilt vector is exactly what the new
    encoder would have given: here, the old one with its axes reversed."""
    state = InMemoryStateLog()
    old = make_worker(stream(event_record, 20), state_log=state, batch_size=20)
    old.worker.run(until=lambda: old.source.exhausted)
    old_rec = old.worker.recommender

    new_rec = Recommender(ReversedBag())
    new_rec.upsert_items(make_items())
    for _, snaps in state.restore([0, 1]):
        new_rec.restore_users(snaps)
    for uid, snap in users_of(old_rec).items():
        again = users_of(new_rec)[uid]
        assert without_vector(again) == without_vector(snap)
        old_vec = torch.from_numpy(np.frombuffer(snap.vector, "<f4").copy())
        new_vec = torch.from_numpy(np.frombuffer(again.vector, "<f4").copy())
        assert torch.allclose(new_vec, old_vec.flip(0), atol=1e-5)
        assert not torch.allclose(new_vec, old_vec, atol=1e-3)  # restoring as-is would be wrong


def test_a_snapshot_of_the_same_encoder_is_restored_as_is(
    make_recommender: Callable[..., Recommender], make_event: Callable[..., Any]
) -> None:
    a = make_recommender()
    a.learn([make_event("u", "a"), make_event("u", "c")])
    (snap,) = a.snapshot_users(["u"])
    b = make_recommender()
    b.restore_users([snap])
    assert b.snapshot_users(["u"]) == [snap] and b.rederived_users == 0


def test_a_snapshot_of_another_size_is_rebuilt_rather_than_refused(
    make_recommender: Callable[..., Recommender], make_event: Callable[..., Any]
) -> None:
    a = make_recommender()
    a.learn([make_event("u", "a")])
    (snap,) = a.snapshot_users(["u"])
    bigger = Recommender(BagOfWordsEncoder((*BagOfWordsEncoder().vocabulary, "extra")))
    bigger.upsert_items(make_items())
    # A record from before encoders were named, from an encoder of another size.
    bigger.restore_users([UserSnapshot(**{**snap.__dict__, "encoder": ""})])
    (again,) = bigger.snapshot_users(["u"])
    assert again.count == 1 and again.history == snap.history
    assert len(again.vector) == 4 * 17 and bigger.rederived_users == 1


def test_the_changelog_record_carries_the_encoder_and_reads_old_records_without_it() -> None:
    import msgpack

    from consumer.changelog import encode_state

    snap = UserSnapshot("u", b"\0" * 8, 1, 1, (("a", 1.0, 1000),), encoder="minilm@abc")
    assert decode_state(encode_state(snap)) == snap
    old = msgpack.unpackb(encode_state(snap))
    del old["encoder"]
    assert decode_state(msgpack.packb(old)).encoder == ""
