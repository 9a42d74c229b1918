"""Specifications of serving.codec: the Recommendation message of DESIGN §3."""

from __future__ import annotations

import msgpack
import pytest

from learner.types import ScoredItem, UserRecommendation
from serving.codec import decode_recommendation, encode_recommendation


def test_recommendation_round_trips_with_every_contract_field() -> None:
    rec = UserRecommendation(
        "u1",
        [ScoredItem("i1", 0.75, "i0"), ScoredItem("i2", 0.5, None)],
        "blend",
        "bag/head-3",
        1_700_000_000_000,
    )
    msg = decode_recommendation(encode_recommendation(rec, generated_ts=1_700_000_000_123))
    assert msg == {
        "v": 1,
        "user_id": "u1",
        "items": [
            {"item_id": "i1", "score": 0.75, "because": "i0"},
            {"item_id": "i2", "score": 0.5, "because": None},
        ],
        "strategy": "blend",
        "model_version": "bag/head-3",
        "event_ts": 1_700_000_000_000,
        "generated_ts": 1_700_000_000_123,
    }


def test_generated_ts_defaults_to_an_integer_clock_reading() -> None:
    msg = decode_recommendation(
        encode_recommendation(UserRecommendation("u1", [], "popular", "m", 0))
    )
    assert isinstance(msg["generated_ts"], int)
    assert msg["generated_ts"] > 0


def test_scores_are_encoded_as_plain_floats() -> None:
    rec = UserRecommendation("u1", [ScoredItem("i1", 1, None)], "personal", "m", 0)
    msg = decode_recommendation(encode_recommendation(rec, generated_ts=1))
    assert isinstance(msg["items"][0]["score"], float)


@pytest.mark.parametrize(
    "obj", [{"v": 2, "user_id": "u1"}, {"user_id": "u1"}, [1, 2]], ids=["v2", "no-v", "array"]
)
def test_decode_rejects_what_is_not_a_v1_recommendation(obj: object) -> None:
    with pytest.raises(ValueError):
        decode_recommendation(bytes(msgpack.packb(obj)))
