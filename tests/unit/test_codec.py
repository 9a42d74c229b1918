"""Specifications of consumer.codec: every bad-input kind of DESIGN §3 has its own reason."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from consumer import codec
from consumer.codec import Limits, decode_event, decode_item, encode_event, encode_item
from consumer.exceptions import ConsumerError, DecodeError
from learner.exceptions import FreshrecError
from learner.types import EVENT_TYPES, Event, Item, ItemDeletion

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000
ML100K_TS_MS = 874_965_758_000  # 1997-09-22, a timestamp of MovieLens-100K


def event_map(**changes: Any) -> dict[str, Any]:
    """A valid event map with some fields changed (a value of ``...`` removes the field)."""
    obj: dict[str, Any] = {
        "v": 1,
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "type": "click",
        "value": None,
        "ts": NOW_MS,
    }
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def packed_event(**changes: Any) -> bytes:
    return bytes(msgpack.packb(event_map(**changes)))


def item_map(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": 1,
        "item_id": "i1",
        "title": "Heat (1995)",
        "text": None,
        "attributes": {},
        "image": None,
        "ts": NOW_MS,
    }
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def packed_item(**changes: Any) -> bytes:
    return bytes(msgpack.packb(item_map(**changes), use_bin_type=True))


def reason_of_event(raw: bytes | None, limits: Limits | None = None) -> str:
    with pytest.raises(DecodeError) as info:
        decode_event(raw, limits or Limits(), now_ms=NOW_MS)
    return info.value.reason


def reason_of_item(key: bytes | None, raw: bytes | None) -> str:
    with pytest.raises(DecodeError) as info:
        decode_item(key, raw, now_ms=NOW_MS)
    return info.value.reason


# -- valid events ------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_valid_event_round_trips(event_type: str) -> None:
    event = Event("e-42", "user-7", "item-9", event_type, 4.5, NOW_MS - 1)  # type: ignore[arg-type]
    assert decode_event(encode_event(event), now_ms=NOW_MS) == event


def test_event_without_value_round_trips_with_value_none() -> None:
    event = Event("e1", "u1", "i1", "view", None, NOW_MS)
    assert decode_event(encode_event(event), now_ms=NOW_MS).value is None


def test_event_with_value_field_absent_decodes_with_value_none() -> None:
    assert decode_event(packed_event(value=...), now_ms=NOW_MS).value is None


def test_ml100k_era_timestamps_are_valid() -> None:
    event = decode_event(packed_event(ts=ML100K_TS_MS), now_ms=NOW_MS)
    assert event.ts == ML100K_TS_MS


def test_timestamp_zero_is_valid() -> None:
    assert decode_event(packed_event(ts=0), now_ms=NOW_MS).ts == 0


def test_int_value_is_accepted_as_float() -> None:
    event = decode_event(packed_event(type="rating", value=4), now_ms=NOW_MS)
    assert event.value == 4.0
    assert isinstance(event.value, float)


def test_unicode_ids_up_to_256_utf8_bytes_are_valid() -> None:
    user_id = "é" * 128  # 256 bytes in UTF-8
    assert decode_event(packed_event(user_id=user_id), now_ms=NOW_MS).user_id == user_id


def test_unknown_extra_fields_are_ignored() -> None:
    assert decode_event(packed_event(extra="x"), now_ms=NOW_MS).event_id == "e1"


def test_ts_exactly_one_day_ahead_is_still_valid() -> None:
    assert decode_event(packed_event(ts=NOW_MS + DAY_MS), now_ms=NOW_MS).ts == NOW_MS + DAY_MS


def test_decode_error_is_a_freshrec_error_with_reason_and_detail() -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(packed_event(type="like"), now_ms=NOW_MS)
    err = info.value
    assert isinstance(err, ConsumerError)
    assert isinstance(err, FreshrecError)
    assert err.reason == "unknown_type"
    assert "like" in err.detail
    assert str(err).startswith("unknown_type")


# -- bad events: one reason per kind ------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"\xc1", b"\x93\x01", b"", b"not msgpack at all \xff\xfe", packed_event() + b"\x00"],
    ids=["reserved-byte", "truncated-array", "empty", "garbage", "trailing-bytes"],
)
def test_bad_msgpack_is_rejected_as_not_msgpack(raw: bytes) -> None:
    assert reason_of_event(raw) == "not_msgpack"


def test_null_value_is_rejected_as_not_msgpack() -> None:
    assert reason_of_event(None) == "not_msgpack"


def test_invalid_utf8_string_is_rejected_as_not_msgpack() -> None:
    raw = msgpack.packb({"v": 1, "event_id": b"\xff\xfe"}, use_bin_type=False)
    assert reason_of_event(bytes(raw)) == "not_msgpack"


@pytest.mark.parametrize(
    "obj",
    [[1, 2, 3], "a string", 42, None, 1.5, True],
    ids=["array", "string", "int", "nil", "float", "bool"],
)
def test_msgpack_that_is_not_a_map_is_rejected_as_not_a_map(obj: Any) -> None:
    assert reason_of_event(bytes(msgpack.packb(obj))) == "not_a_map"


def test_map_with_non_string_keys_is_rejected_as_wrong_type() -> None:
    obj: dict[Any, Any] = event_map()
    obj[7] = "x"
    assert reason_of_event(bytes(msgpack.packb(obj))) == "wrong_type"


@pytest.mark.parametrize(
    "field, value",
    [
        ("event_id", 17),
        ("user_id", 3.5),
        ("user_id", ["u1"]),
        ("item_id", {"id": "i1"}),
        ("item_id", b"i1"),
        ("type", 1),
        ("value", "5"),
        ("value", [1.0]),
        ("ts", 1.7e12),
        ("ts", "1700000000000"),
        ("ts", True),
    ],
)
def test_wrong_field_types_are_rejected_as_wrong_type(field: str, value: Any) -> None:
    raw = bytes(msgpack.packb(event_map(**{field: value}), use_bin_type=True))
    assert reason_of_event(raw) == "wrong_type"


@pytest.mark.parametrize("value", [True, False])
def test_bool_value_is_rejected_as_wrong_type(value: bool) -> None:
    assert reason_of_event(packed_event(value=value)) == "wrong_type"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
def test_empty_id_is_rejected_as_bad_id(field: str) -> None:
    assert reason_of_event(packed_event(**{field: ""})) == "bad_id"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
def test_id_over_256_bytes_is_rejected_as_bad_id(field: str) -> None:
    assert decode_event(packed_event(**{field: "x" * 256}), now_ms=NOW_MS)  # the limit itself
    assert reason_of_event(packed_event(**{field: "x" * 257})) == "bad_id"


def test_id_of_257_utf8_bytes_in_fewer_characters_is_rejected_as_bad_id() -> None:
    assert reason_of_event(packed_event(user_id="é" * 128 + "x")) == "bad_id"


def test_ten_kilobyte_id_is_rejected_as_bad_id() -> None:
    assert reason_of_event(packed_event(item_id="i" * 10_240)) == "bad_id"


def test_id_limit_is_configurable() -> None:
    assert reason_of_event(packed_event(user_id="u" * 9), Limits(max_id_bytes=8)) == "bad_id"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "type"])
def test_missing_or_null_required_field_is_rejected_as_missing_field(field: str) -> None:
    assert reason_of_event(packed_event(**{field: ...})) == "missing_field"
    assert reason_of_event(packed_event(**{field: None})) == "missing_field"


@pytest.mark.parametrize("kind", ["like", "CLICK", "", "purchase "])
def test_unknown_type_is_rejected_as_unknown_type(kind: str) -> None:
    assert reason_of_event(packed_event(type=kind)) == "unknown_type"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_is_rejected_as_non_finite_value(value: float) -> None:
    assert reason_of_event(packed_event(type="rating", value=value)) == "non_finite_value"


def test_absent_ts_is_rejected_as_missing_field() -> None:
    assert reason_of_event(packed_event(ts=...)) == "missing_field"
    assert reason_of_event(packed_event(ts=None)) == "missing_field"


@pytest.mark.parametrize("ts", [-1, -NOW_MS])
def test_negative_ts_is_rejected_as_bad_ts(ts: int) -> None:
    assert reason_of_event(packed_event(ts=ts)) == "bad_ts"


@pytest.mark.parametrize("ahead_ms", [DAY_MS + 1, 30 * DAY_MS, 2**63 - NOW_MS])
def test_ts_more_than_a_day_ahead_is_rejected_as_bad_ts(ahead_ms: int) -> None:
    assert reason_of_event(packed_event(ts=NOW_MS + ahead_ms)) == "bad_ts"


def test_future_limit_follows_the_given_clock_and_limits() -> None:
    raw = packed_event(ts=NOW_MS + 10_000)
    with pytest.raises(DecodeError):
        decode_event(raw, Limits(max_future_ms=5_000), now_ms=NOW_MS)
    assert decode_event(raw, Limits(max_future_ms=5_000), now_ms=NOW_MS + 5_000).ts


def test_future_check_uses_the_wall_clock_when_no_now_is_given() -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(packed_event(ts=2**62))
    assert info.value.reason == "bad_ts"


def test_record_over_one_mebibyte_is_rejected_as_record_too_large() -> None:
    raw = packed_event(padding="x" * (1 << 20))
    assert len(raw) > 1 << 20
    assert reason_of_event(raw) == "record_too_large"


def test_record_of_exactly_the_size_limit_is_valid() -> None:
    raw = packed_event(padding="x" * 300)
    assert decode_event(raw, Limits(max_record_bytes=len(raw)), now_ms=NOW_MS)
    assert reason_of_event(raw, Limits(max_record_bytes=len(raw) - 1)) == "record_too_large"


def test_size_limit_applies_before_unpacking() -> None:
    # Oversized garbage is reported as too large, not as not_msgpack: no parsing was attempted.
    assert reason_of_event(b"\xc1" * 2048, Limits(max_record_bytes=1024)) == "record_too_large"


@pytest.mark.parametrize(
    "version",
    [2, 0, "1", None, True, ...],
    ids=["v2", "v0", "string", "nil", "bool", "missing"],
)
def test_bad_or_missing_version_is_rejected_as_bad_version(version: Any) -> None:
    assert reason_of_event(packed_event(v=version)) == "bad_version"


def test_float_version_is_rejected_as_bad_version() -> None:
    assert reason_of_event(packed_event(v=1.0)) == "bad_version"


# -- items -------------------------------------------------------------------------------


def test_item_round_trips_with_every_field() -> None:
    item = Item(
        "i42",
        "Toy Story (1995)",
        "A cowboy doll feels threatened by a space ranger.",
        {"genres": ["Animation", "Comedy"], "year": 1995, "rating": 3.9, "studio": "Pixar"},
        b"\x89PNG\r\n",
        NOW_MS,
    )
    decoded = decode_item(b"i42", encode_item(item), now_ms=NOW_MS)
    assert decoded == item
    assert isinstance(decoded, Item)
    assert decoded.text == item.text


def test_item_with_only_title_round_trips() -> None:
    item = Item("i1", "Heat (1995)")
    assert decode_item(b"i1", encode_item(item), now_ms=NOW_MS) == item


def test_item_tombstone_decodes_to_item_deletion() -> None:
    assert decode_item(b"i7", None) == ItemDeletion("i7")


@pytest.mark.parametrize(
    "key, reason",
    [(None, "bad_id"), (b"", "bad_id"), (b"\xff\xfe", "bad_id"), (b"k" * 257, "bad_id")],
    ids=["no-key", "empty-key", "non-utf8-key", "long-key"],
)
def test_bad_tombstone_keys_are_rejected(key: bytes | None, reason: str) -> None:
    assert reason_of_item(key, None) == reason


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xc1", "not_msgpack"),
        (bytes(msgpack.packb(["i1", "title"])), "not_a_map"),
        (packed_item(v=2), "bad_version"),
        (packed_item(item_id=""), "bad_id"),
        (packed_item(item_id="i" * 257), "bad_id"),
        (packed_item(item_id=5), "wrong_type"),
        (packed_item(title=...), "missing_field"),
        (packed_item(title=5), "wrong_type"),
        (packed_item(text=["a"]), "wrong_type"),
        (packed_item(image="not bytes"), "wrong_type"),
        (packed_item(attributes=["a", "b"]), "wrong_type"),
        (packed_item(attributes=False), "wrong_type"),
        (packed_item(attributes=""), "wrong_type"),
        (packed_item(attributes={"year": True}), "wrong_type"),
        (packed_item(attributes={"tags": ["a", 1]}), "wrong_type"),
        (packed_item(attributes={"nested": {"a": 1}}), "wrong_type"),
        (packed_item(attributes={"score": float("nan")}), "non_finite_value"),
        (packed_item(ts=...), "missing_field"),
        (packed_item(ts=-5), "bad_ts"),
        (packed_item(ts=NOW_MS + 2 * DAY_MS), "bad_ts"),
        (packed_item(ts="yesterday"), "wrong_type"),
        (packed_item(padding="x" * (1 << 20)), "record_too_large"),
    ],
    ids=[
        "not-msgpack",
        "array",
        "version",
        "empty-id",
        "long-id",
        "int-id",
        "no-title",
        "int-title",
        "list-text",
        "str-image",
        "list-attributes",
        "false-attributes",
        "empty-string-attributes",
        "bool-attribute",
        "mixed-list-attribute",
        "map-attribute",
        "nan-attribute",
        "no-ts",
        "negative-ts",
        "future-ts",
        "str-ts",
        "too-large",
    ],
)
def test_bad_item_records_are_rejected_with_reason(raw: bytes, reason: str) -> None:
    assert reason_of_item(b"i1", raw) == reason


def test_reason_constants_match_the_documented_labels() -> None:
    constants = {
        codec.TOO_LARGE,
        codec.NOT_MSGPACK,
        codec.NOT_A_MAP,
        codec.BAD_VERSION,
        codec.MISSING_FIELD,
        codec.WRONG_TYPE,
        codec.BAD_ID,
        codec.UNKNOWN_TYPE,
        codec.NON_FINITE_VALUE,
        codec.BAD_TS,
    }
    assert constants == codec.REASONS
    assert constants == {
        "record_too_large",
        "not_msgpack",
        "not_a_map",
        "bad_version",
        "missing_field",
        "wrong_type",
        "bad_id",
        "unknown_type",
        "non_finite_value",
        "bad_ts",
    }


def test_details_quote_bad_values_in_a_bounded_preview() -> None:
    deep: Any = 1
    for _ in range(1000):  # builtin repr of this raises RecursionError
        deep = [deep]
    for raw in [packed_event(v=deep), packed_event(v="v" * 100_000)]:
        with pytest.raises(DecodeError) as info:
            decode_event(raw, now_ms=NOW_MS)
        assert info.value.reason == "bad_version"
        assert len(info.value.detail) < 200


def test_nesting_deeper_than_msgpack_unpacks_is_not_msgpack() -> None:
    raw = b"\x91" * 10_000 + b"\x01"
    assert reason_of_event(raw) == "not_msgpack"
