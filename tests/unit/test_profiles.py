"""Specifications of profile cold start: the users-topic codec, the profile text template, how a
profile ranks a user before any event and fades as events arrive, state snapshots, and the
worker reading the users feed."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import torch

from consumer.codec import Limits, decode_user, encode_user
from consumer.config import WorkerConfig
from consumer.exceptions import DecodeError
from consumer.source import InMemorySource, Record
from consumer.topics import topic_specs
from learner.evaluate import evaluate_stream
from learner.profiles import ProfileTable, profile_share, profile_text
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, ProfileDeletion, UserProfile
from learner.zoo import FreshrecStream
from tests.unit.conftest import T0_MS, make_items

USERS_TOPIC = "freshrec.users"
MakeRecommender = Callable[..., Recommender]
MakeEvent = Callable[..., Event]

# Profiles whose text (through the bag-of-words test encoder) is close to one kind of item.
SPACE_FAN = UserProfile("u1", {"likes": "space war"})
ROMANTIC = UserProfile("u2", {"likes": "love paris"})


def user_record(offset: int, profile: UserProfile | None, key: str = "u1") -> Record:
    value = None if profile is None else encode_user(profile)
    user_id = key if profile is None else profile.user_id
    return Record(USERS_TOPIC, 0, offset, user_id.encode(), value)


def top_ids(rec: Recommender, user: str, k: int = 3) -> list[str]:
    return [it.item_id for it in rec.recommend([user], k)[0].items]


# -- the contract and its codec ------------------------------------------------------------


def test_profile_round_trips_through_the_codec() -> None:
    profile = UserProfile("u1", {"age": 24, "gender": "M", "tags": ["jazz"], "score": 0.5}, 7)
    assert decode_user(b"u1", encode_user(profile)) == profile


def test_null_value_is_a_tombstone_of_the_keyed_user() -> None:
    assert decode_user(b"u9", None) == ProfileDeletion("u9")


GOOD: dict[str, Any] = {"v": 1, "user_id": "u1", "attributes": {"age": 30}, "ts": T0_MS}

BAD_PROFILES: dict[str, Any] = {
    "not_msgpack": b"\xc1\xc1",
    "not_a_map": bytes(msgpack.packb(["u1", {"age": 30}])),
    "bad_version": {"v": 2},
    "missing_field": {"attributes": None},
    "wrong_type": {"attributes": {"age": {"years": 30}}},
    "bad_id": {"user_id": ""},
    "non_finite_value": {"attributes": {"age": float("nan")}},
    "bad_ts": {"ts": -5},
    "record_too_large": {"attributes": {"bio": "x" * 4096}},
}


@pytest.mark.parametrize("reason", sorted(BAD_PROFILES))
def test_bad_profile_record_is_rejected_with_its_reason(reason: str) -> None:
    change = BAD_PROFILES[reason]
    value = change if isinstance(change, bytes) else bytes(msgpack.packb({**GOOD, **change}))
    with pytest.raises(DecodeError) as caught:
        decode_user(b"u1", value, Limits(max_record_bytes=1024))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("field", "value"), [("user_id", 7), ("attributes", ["age", 30]), ("ts", "now")]
)
def test_profile_field_of_the_wrong_type_is_wrong_type(field: str, value: Any) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_user(b"u1", bytes(msgpack.packb({**GOOD, field: value})))
    assert caught.value.reason == "wrong_type"


@pytest.mark.parametrize("field", ["user_id", "attributes", "ts"])
def test_profile_without_a_required_field_is_missing_field(field: str) -> None:
    value = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(DecodeError) as caught:
        decode_user(b"u1", bytes(msgpack.packb(value)))
    assert caught.value.reason == "missing_field"


def test_tombstone_without_a_key_is_bad_id() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_user(None, None)
    assert caught.value.reason == "bad_id"


def test_users_topic_is_compacted_and_partitioned_like_the_items_topic() -> None:
    config = WorkerConfig(partitions=6, topic_prefix="shop.")
    specs = topic_specs(config)
    assert config.users_topic == "shop.users"
    assert specs["shop.users"] == (6, {"cleanup.policy": "compact"})
    assert specs["shop.users"][0] == specs["shop.items"][0]


# -- the text template ---------------------------------------------------------------------


def test_ml100k_profile_text_buckets_the_age_and_names_the_region() -> None:
    text = profile_text({"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"})
    assert text == (
        "age 18-24, male, occupation: technician, region: US mountain west, Colorado and Arizona"
    )


@pytest.mark.parametrize(
    ("age", "bucket"),
    [(7, "under 18"), (17, "under 18"), (18, "18-24"), (34, "25-34"), (35, "35-44"), (73, "65+")],
)
def test_age_bucket_boundaries(age: int, bucket: str) -> None:
    assert profile_text({"age": age}) == f"age {bucket}"


def test_users_of_one_bucket_share_one_text_and_one_vector(bag_encoder: Any) -> None:
    rec = Recommender(bag_encoder)
    rec.upsert_profiles(
        [
            UserProfile("u1", {"age": 26, "gender": "F", "zip": "94043"}),
            UserProfile("u2", {"age": 33, "gender": "f", "zip": "98101"}),
        ]
    )
    assert len(rec.profiles) == 2 and rec.profiles.distinct_texts == 1


def test_canadian_postal_code_is_outside_the_us_and_other_attributes_follow_sorted() -> None:
    text = profile_text({"zip": "T8H1N", "occupation": "writer", "b": ["x", "y"], "a": 1.5})
    assert text == "occupation: writer, region: outside the US, a: 1.5, b: x, y"


def test_profile_without_attributes_is_no_profile(
    make_recommender: MakeRecommender,
) -> None:
    rec = make_recommender()
    assert rec.upsert_profiles([SPACE_FAN]) == 1
    assert rec.upsert_profiles([UserProfile("u1", {})]) == 0
    assert "u1" not in rec.profiles


# -- ranking by profile before any event, and the blend-out -------------------------------


def test_cold_user_ranks_the_item_closest_to_their_profile_first(
    make_recommender: MakeRecommender,
) -> None:
    rec = make_recommender()
    rec.upsert_profiles([SPACE_FAN, ROMANTIC])
    fan, romantic = rec.recommend(["u1", "u2"], k=8)
    assert fan.items[0].item_id == "a"  # "Space war"
    assert romantic.items[0].item_id == "c"  # "Love in Paris"
    fan_rank = [it.item_id for it in fan.items]
    romantic_rank = [it.item_id for it in romantic.items]
    assert fan_rank.index("a") < romantic_rank.index("a")
    assert fan.strategy == "blend" and romantic.strategy == "blend"


def test_user_without_profile_or_events_gets_popular_items(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender()
    rec.upsert_profiles([SPACE_FAN])
    rec.learn([make_event("u9", "f"), make_event("u8", "f"), make_event("u7", "h")])
    stranger = rec.recommend(["nobody"], k=2)[0]
    assert stranger.strategy == "popular"
    assert [it.item_id for it in stranger.items] == ["f", "h"]


def test_profile_share_is_one_before_events_and_fades_as_one_over_n() -> None:
    share = profile_share(torch.arange(0, 20), weight=2.0)
    assert share[0] == 1.0 and math.isclose(float(share[2]), 0.5)
    assert bool((share[1:] < share[:-1]).all())
    assert profile_share(torch.tensor([0, 5]), weight=0.0).tolist() == [0.0, 0.0]


def test_own_events_take_over_from_the_profile_as_they_accumulate(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    rec = make_recommender(min_events=1, train=False, cooc=False, trend_signal=False)
    rec.upsert_profiles([ROMANTIC])
    assert top_ids(rec, "u2", 1) == ["c"]  # the profile alone: love in Paris
    gaps = []
    for item in ["a", "b", "e", "a", "b", "e"]:  # then only space items
        rec.learn([make_event("u2", item)])
        scores = {it.item_id: it.score for it in rec.recommend(["u2"], k=8)[0].items}
        gaps.append(scores.get("d", -math.inf) - scores.get("g", -math.inf))
    # "Love and a kiss in the rain" loses ground against an unrelated item as events arrive.
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps))


def test_profile_counts_as_weight_events_in_the_trending_blend(
    make_recommender: MakeRecommender,
) -> None:
    rec = make_recommender(min_events=4, profile_weight=2.0)
    rec.upsert_profiles([SPACE_FAN])
    assert rec.recommend(["u1"], k=1)[0].strategy == "blend"
    off = make_recommender(min_events=4, profile_weight=0.0)
    off.upsert_profiles([SPACE_FAN])
    assert off.recommend(["u1"], k=1)[0].strategy == "popular"


def test_users_without_a_profile_rank_exactly_as_without_profiles(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    events = [make_event(u, i) for u, i in [("u3", "a"), ("u4", "c"), ("u3", "b"), ("u4", "e")]]
    plain, profiled = make_recommender(min_train_pairs=1), make_recommender(min_train_pairs=1)
    profiled.upsert_profiles([SPACE_FAN, ROMANTIC])  # u1, u2: no events, so no training either
    for ev in events:
        plain.learn([ev])
        profiled.learn([ev])
    assert plain.recommend(["u3", "u4"], k=5) == profiled.recommend(["u3", "u4"], k=5)


def test_deleting_a_profile_makes_the_cold_user_popular_again(
    make_recommender: MakeRecommender,
) -> None:
    rec = make_recommender()
    rec.upsert_profiles([SPACE_FAN])
    assert rec.delete_profiles(["u1", "never-had-one"]) == 1
    assert rec.recommend(["u1"], k=1)[0].strategy == "popular"
    assert rec.profiles.distinct_texts == 0


def test_profile_users_train_the_head_on_their_first_event(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    with_profile = make_recommender(min_train_pairs=1)
    with_profile.upsert_profiles([SPACE_FAN])
    assert with_profile.learn([make_event("u1", "a")]).trained_pairs > 0
    without = make_recommender(min_train_pairs=1)
    assert without.learn([make_event("u1", "a")]).trained_pairs == 0


# -- state snapshots and memory ------------------------------------------------------------


def test_snapshots_do_not_carry_the_profile_and_restore_gives_the_same_lists(
    make_recommender: MakeRecommender, make_event: MakeEvent
) -> None:
    events = [make_event("u2", "a"), make_event("u2", "f")]
    # No head training: a profiled user's first event trains the head, which changes the
    # item offsets folded into state; the point here is what the state itself holds.
    plain, profiled = make_recommender(train=False), make_recommender(train=False)
    profiled.upsert_profiles([ROMANTIC])
    for ev in events:
        plain.learn([ev])
        profiled.learn([ev])
    [snap] = profiled.snapshot_users(["u2"])
    assert snap == plain.snapshot_users(["u2"])[0]  # user state is the events' alone

    restored = make_recommender(train=False)
    restored.upsert_profiles([ROMANTIC])  # profiles come back from the users topic
    restored.restore_users([snap])
    assert restored.recommend(["u2"], k=5)[0].items == profiled.recommend(["u2"], k=5)[0].items
    # Dropping the user's state (a revoke, or residency eviction) leaves the profile.
    profiled.users.remove(["u2"])
    assert "u2" in profiled.profiles
    assert profiled.recommend(["u2"], k=1)[0].strategy == "blend"


def test_profile_table_reuses_freed_rows() -> None:
    table = ProfileTable(dim=2, capacity=1)
    for n in range(5):
        text = f"t{n}"
        table.add_texts([text], torch.tensor([[1.0, float(n)]]))
        table.assign("u", text)  # one user, a new text each time: old rows are freed
    assert table.distinct_texts == 1 and table.vectors.shape[0] <= 2


# -- the worker reads the users feed ------------------------------------------------------


def test_worker_loads_profiles_at_start_and_ranks_a_cold_user_by_theirs(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    profiles = InMemorySource(
        [user_record(0, SPACE_FAN), user_record(1, ROMANTIC), user_record(2, None, key="u9")]
    )
    rig = make_worker([event_record(0, user="u3", item="f")], profiles=profiles)
    rig.worker.bootstrap()
    assert len(rig.worker.recommender.profiles) == 2
    assert rig.sample("freshrec_profiles") == 2
    assert rig.sample("freshrec_profiles_updated_total", op="upsert") == 2
    assert profiles.exhausted
    assert top_ids(rig.worker.recommender, "u1", 1) == ["a"]


def test_profile_changes_during_run_take_effect_and_bad_ones_go_to_the_dlq(
    make_worker: Callable[..., Any], event_record: Callable[..., Record]
) -> None:
    bad = Record(USERS_TOPIC, 0, 2, b"u5", bytes(msgpack.packb({**GOOD, "v": 9})))
    profiles = InMemorySource([user_record(0, SPACE_FAN), user_record(1, None, key="u1"), bad])
    rig = make_worker([event_record(0, user="u3", item="f")], profiles=profiles)
    report = rig.worker.step()  # no bootstrap: profile records come in the step
    assert report.processed == 1
    assert "u1" not in rig.worker.recommender.profiles  # the tombstone after the upsert won
    [(letter, reason)] = rig.dlq.letters
    assert letter == bad and reason.startswith("bad_version")
    assert rig.sample("freshrec_profiles_rejected_total", reason="bad_version") == 1
    assert rig.sample("freshrec_events_rejected_total", reason="bad_version") == 0


# -- evaluation feeds profiles only to the models that use them ---------------------------


def test_evaluation_feeds_profiles_to_freshrec_profiles_only(bag_encoder: Any) -> None:
    items = make_items()
    events = [Event("e0", "u2", "c", "click", None, T0_MS)]
    used = FreshrecStream("p", bag_encoder, ModelConfig(min_events=1), profiles=True)
    ignored = FreshrecStream("n", bag_encoder, ModelConfig(min_events=1))
    for model in (used, ignored):
        evaluate_stream(
            model, events, k=1, catalog_size=len(items), items=items, profiles=[ROMANTIC]
        )
    assert "u2" in used.recommender.profiles
    assert len(ignored.recommender.profiles) == 0
