"""Properties of poison input (issue 5, test 7): whatever bytes arrive, the codecs answer with a
valid value or a labelled DecodeError, and the worker neither crashes nor loses a record.

The decode properties hold the codecs to an independent reading of DESIGN §3
(:func:`event_violations`): a record decodes exactly when it breaks no rule, and a rejected
record's reason is one of the rules it breaks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import codec
from consumer.codec import REASONS, Limits, decode_event, decode_item
from consumer.exceptions import DecodeError
from consumer.source import Record
from consumer.worker import UNKNOWN_ITEM
from learner.types import EVENT_TYPES, Event, Item, ItemDeletion
from tests.fixtures.poison import nested_arrays, nested_maps, raw_map, raw_str

pytestmark = pytest.mark.timeout(300)

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000
TOPIC = "freshrec.events"
CATALOG_IDS = "abcdefgh"  # the unit suite's CATALOG (tests/unit/conftest.py)
WORKER_REASONS = REASONS | {UNKNOWN_ITEM}
ID_FIELDS = ("event_id", "user_id", "item_id")

# The unit suite's limits, and tight ones under which size and id limits are easy to hit.
LIMITS = [Limits(), Limits(max_record_bytes=2048, max_id_bytes=16, max_future_ms=1000)]

DECODE_SETTINGS = settings(max_examples=300, deadline=None)
WORKER_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    # make_worker is a factory: every example builds its own worker, recommender and edges.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- strategies --------------------------------------------------------------------------

ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, NOW_MS, NOW_MS + DAY_MS + 1]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]),
)
huge_strings = st.integers(257, 70_000).map(lambda n: "é" * (n // 2) if n % 2 else "x" * n)
strings = st.one_of(st.text(max_size=40), st.sampled_from(EVENT_TYPES), huge_strings)
leaves = st.one_of(st.none(), st.booleans(), ints, floats, strings, st.binary(max_size=40))
# Structures msgpack can pack (it refuses nesting deeper than 512: deeper ones are raw bytes).
structures = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), ints, st.binary(max_size=8)), inner, max_size=4
        ),
    ),
    max_leaves=20,
)
# Byte strings that are not UTF-8: what a msgpack *str* holding them must be rejected for.
not_utf8 = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xe2\x82", b"\x80"]
)


@st.composite
def packed(draw: st.DrawFn, values: st.SearchStrategy[Any] = structures) -> bytes:
    """``values`` packed the way a producer might: bytes as bin or as (possibly invalid) str,
    floats as 64 or (where they fit) 32 bits."""
    value, bin_type = draw(values), draw(st.booleans())
    if draw(st.booleans()):
        try:
            return bytes(msgpack.packb(value, use_bin_type=bin_type, use_single_float=True))
        except OverflowError:  # a double beyond float32's range
            pass
    return bytes(msgpack.packb(value, use_bin_type=bin_type))


def deep_values() -> st.SearchStrategy[bytes]:
    """Encoded values nested up to 10,000 levels, arrays or maps."""
    depth = st.integers(1, 10_000) | st.sampled_from([1023, 1024, 1025, 10_000])
    return st.one_of(depth.map(nested_arrays), depth.map(nested_maps))


def field_values(name: str) -> st.SearchStrategy[bytes]:
    """Encoded values for one field: near misses of its rule, and anything at all."""
    near: list[Any]
    if name in ID_FIELDS:
        near = ["", "x" * 16, "x" * 17, "x" * 256, "x" * 257, "é" * 128, "é" * 129, "i1"]
    elif name == "type":
        near = [*EVENT_TYPES, "CLICK", "", "like"]
    elif name == "value":
        near = [None, 4.5, 4, True, math.nan, math.inf, "5", 2**64 - 1]
    elif name == "ts":
        near = [0, -1, NOW_MS, NOW_MS + 1000, NOW_MS + 1001, NOW_MS + DAY_MS + 1, 1.7e12, True]
    else:  # "v"
        near = [1, 2, 0, "1", 1.0, True, None]
    return st.one_of(
        st.sampled_from(near).map(lambda v: bytes(msgpack.packb(v))),
        packed(),
        not_utf8.map(raw_str),
        deep_values(),
    )


@st.composite
def event_maps(draw: st.DrawFn) -> bytes:
    """A valid event map with some fields kept, some dropped, some replaced, maybe extras."""
    valid: dict[str, Any] = {
        "v": 1,
        "event_id": draw(st.text(min_size=1, max_size=16)),
        "user_id": draw(st.sampled_from(["u1", "u2", "ü-ser"])),
        "item_id": draw(st.sampled_from(CATALOG_IDS + "z")),
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "value": draw(st.none() | st.floats(-10, 10)),
        "ts": draw(st.integers(0, NOW_MS)),
    }
    entries: list[tuple[str, bytes]] = []
    for name, value in valid.items():
        fate = draw(st.sampled_from(["keep"] * 6 + ["drop", "replace"]))
        if fate == "keep":
            entries.append((name, bytes(msgpack.packb(value))))
        elif fate == "replace":
            entries.append((name, draw(field_values(name))))
    for _ in range(draw(st.integers(0, 2))):
        entries.append((draw(st.text(max_size=8)), draw(packed() | deep_values())))
    return raw_map(entries)


# An events-topic value: anything a producer could have written.
event_values = st.one_of(st.binary(max_size=200), packed(), event_maps(), deep_values(), st.none())


# -- the model of DESIGN §3 ----------------------------------------------------------------


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _field_violations(obj: dict[str, Any], limits: Limits, now_ms: int) -> set[str]:
    out: set[str] = set()
    for name in (*ID_FIELDS, "type", "ts"):
        if obj.get(name) is None:
            out.add(codec.MISSING_FIELD)
    for name in ID_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            out.add(codec.WRONG_TYPE)
        elif isinstance(value, str) and not 0 < len(value.encode()) <= limits.max_id_bytes:
            out.add(codec.BAD_ID)
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        out.add(codec.WRONG_TYPE)
    elif isinstance(kind, str) and kind not in EVENT_TYPES:
        out.add(codec.UNKNOWN_TYPE)
    value = obj.get("value")
    if value is not None and not (_int(value) or isinstance(value, float)):
        out.add(codec.WRONG_TYPE)
    elif isinstance(value, float) and not math.isfinite(value):
        out.add(codec.NON_FINITE_VALUE)
    ts = obj.get("ts")
    if ts is not None and not _int(ts):
        out.add(codec.WRONG_TYPE)
    elif _int(ts) and not 0 <= ts <= now_ms + limits.max_future_ms:
        out.add(codec.BAD_TS)
    return out


def event_violations(raw: bytes | None, limits: Limits, now_ms: int) -> set[str]:
    """Every rule of DESIGN §3 that ``raw`` breaks; the first three are checked in order
    (a record that is not a map has no fields to judge), the field rules all at once."""
    if raw is None:
        return {codec.NOT_MSGPACK}
    if len(raw) > limits.max_record_bytes:
        return {codec.TOO_LARGE}
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return {codec.NOT_MSGPACK}
    if not isinstance(obj, dict):
        return {codec.NOT_A_MAP}
    if not all(isinstance(k, str) for k in obj):
        return {codec.WRONG_TYPE}
    if not (_int(obj.get("v")) and obj["v"] == 1):
        return {codec.BAD_VERSION}
    return _field_violations(obj, limits, now_ms)


def assert_within_contract(event: Event, limits: Limits, now_ms: int) -> None:
    """Every limit of DESIGN §3 holds for a decoded event."""
    for value in (event.event_id, event.user_id, event.item_id):
        assert isinstance(value, str) and 0 < len(value.encode()) <= limits.max_id_bytes
    assert event.type in EVENT_TYPES
    assert event.value is None or (type(event.value) is float and math.isfinite(event.value))
    assert _int(event.ts) and 0 <= event.ts <= now_ms + limits.max_future_ms


# -- decode_event ------------------------------------------------------------------------


@DECODE_SETTINGS
@given(raw=event_values, limits=st.sampled_from(LIMITS))
def test_decode_event_returns_a_contract_event_or_the_reason_of_a_broken_rule(
    raw: bytes | None, limits: Limits
) -> None:
    broken = event_violations(raw, limits, NOW_MS)
    try:
        event = decode_event(raw, limits, now_ms=NOW_MS)
    except DecodeError as err:
        assert err.reason in REASONS
        assert err.reason in broken, f"{err.reason} not among {broken}"
        assert len(err.detail) < 1024  # a bounded preview, however big the bad value
        return
    assert not broken, f"accepted a record that breaks {broken}"
    assert_within_contract(event, limits, NOW_MS)
    obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    assert (event.event_id, event.user_id, event.item_id, event.type, event.ts) == (
        obj["event_id"],
        obj["user_id"],
        obj["item_id"],
        obj["type"],
        obj["ts"],
    )
    assert event.value == (None if obj.get("value") is None else float(obj["value"]))


@DECODE_SETTINGS
@given(raw=st.binary(max_size=4096))
def test_decode_event_of_arbitrary_bytes_never_raises_anything_but_decode_error(raw: bytes) -> None:
    try:
        decode_event(raw, now_ms=NOW_MS)
    except DecodeError as err:
        assert err.reason in REASONS


@pytest.mark.parametrize("depth", [1000, 1023, 1024, 10_000, 100_000])
@pytest.mark.parametrize("field", ["v", "event_id", "value", "ts", "extra"])
def test_deep_nesting_anywhere_in_an_event_is_rejected_or_ignored_without_recursion_error(
    field: str, depth: int
) -> None:
    fields = {"v": 1, "event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": 1}
    entries = [(k, bytes(msgpack.packb(v))) for k, v in fields.items() if k != field]
    raw = raw_map([*entries, (field, nested_arrays(depth))])
    broken = event_violations(raw, Limits(), NOW_MS)
    if not broken:  # only an ignored extra field that msgpack can unpack
        assert decode_event(raw, now_ms=NOW_MS).event_id == "e"
        return
    with pytest.raises(DecodeError) as info:
        decode_event(raw, now_ms=NOW_MS)
    assert info.value.reason in broken


# -- decode_item -------------------------------------------------------------------------


@st.composite
def item_maps(draw: st.DrawFn) -> bytes:
    """A valid item map with some fields kept, dropped or replaced by anything."""
    valid: dict[str, Any] = {
        "v": 1,
        "item_id": draw(st.text(min_size=1, max_size=16)),
        "title": draw(st.text(max_size=30)),
        "text": draw(st.none() | st.text(max_size=30)),
        "attributes": draw(
            st.dictionaries(
                st.text(max_size=8),
                st.text(max_size=8) | ints | st.floats() | st.lists(st.text(max_size=4)),
                max_size=3,
            )
        ),
        "image": draw(st.none() | st.binary(max_size=16)),
        "ts": draw(st.integers(0, NOW_MS)),
    }
    entries: list[tuple[str, bytes]] = []
    for name, value in valid.items():
        fate = draw(st.sampled_from(["keep"] * 6 + ["drop", "replace"]))
        if fate == "keep":
            entries.append((name, bytes(msgpack.packb(value, use_bin_type=True))))
        elif fate == "replace":
            entries.append((name, draw(packed() | deep_values() | not_utf8.map(raw_str))))
    return raw_map(entries)


def assert_item_is_its_map(item: Item, raw: bytes, limits: Limits, now_ms: int) -> None:
    """A decoded item satisfies the item contract and says what its map says."""
    obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    assert isinstance(obj, dict) and obj.get("v") == 1 and _int(obj["v"])
    assert item.item_id == obj["item_id"]
    assert 0 < len(item.item_id.encode()) <= limits.max_id_bytes
    assert isinstance(item.title, str) and item.title == obj["title"]
    description = item.description
    assert description == obj.get("text") and (description is None or isinstance(description, str))
    assert item.image == obj.get("image") and (item.image is None or isinstance(item.image, bytes))
    attributes = obj.get("attributes")
    assert attributes is None or isinstance(attributes, dict)
    assert dict(item.attributes) == (attributes or {})
    for name, value in item.attributes.items():
        assert isinstance(name, str)
        if isinstance(value, list):
            assert all(isinstance(v, str) for v in value)
        else:
            assert isinstance(value, str | int | float) and not isinstance(value, bool)
            assert not isinstance(value, float) or math.isfinite(value)
    assert _int(item.ts) and 0 <= item.ts <= now_ms + limits.max_future_ms
    assert item.ts == obj["ts"]


@DECODE_SETTINGS
@given(
    key=st.none() | st.binary(max_size=300) | not_utf8,
    raw=st.none() | st.binary(max_size=200) | packed() | item_maps() | deep_values(),
    limits=st.sampled_from(LIMITS),
)
def test_decode_item_returns_a_contract_item_or_deletion_or_a_known_reason(
    key: bytes | None, raw: bytes | None, limits: Limits
) -> None:
    try:
        decoded = decode_item(key, raw, limits, now_ms=NOW_MS)
    except DecodeError as err:
        assert err.reason in REASONS
        assert len(err.detail) < 1024
        return
    if raw is None:
        assert isinstance(decoded, ItemDeletion)
        assert key is not None and 0 < len(key) <= limits.max_id_bytes
        assert decoded.item_id == key.decode("utf-8")
    else:
        assert isinstance(decoded, Item)
        assert len(raw) <= limits.max_record_bytes
        assert_item_is_its_map(decoded, raw, limits, NOW_MS)


# -- the worker --------------------------------------------------------------------------


@st.composite
def valid_event_values(draw: st.DrawFn) -> bytes:
    """An event the unit worker must process: a catalog item, a time in the past."""
    event = Event(
        draw(st.text(st.characters(max_codepoint=0x7FF), min_size=1, max_size=8)),  # <= 16 B
        draw(st.sampled_from(["u1", "u2", "u3", "ü-ser"])),
        draw(st.sampled_from(CATALOG_IDS)),
        draw(st.sampled_from(EVENT_TYPES)),
        draw(st.none() | st.floats(-1e300, 1e300)),
        draw(st.integers(0, NOW_MS)),  # in the past of any clock that runs this
    )
    return codec.encode_event(event)


@st.composite
def topic_records(draw: st.DrawFn) -> list[Record]:
    """A stream of 1-60 records over three partitions: valid events among any other bytes."""
    valid = valid_event_values()
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=60))  # True: a valid event
    values = [draw(valid if is_valid else event_values) for is_valid in kinds]
    keys = st.none() | st.sampled_from([b"u1", b"u2", b"\xff\xfe"]) | st.binary(max_size=12)
    next_offset = [0, 0, 0]
    records = []
    for value in values:
        partition = draw(st.integers(0, 2))
        offset = next_offset[partition]
        next_offset[partition] += 1
        records.append(Record(TOPIC, partition, offset, draw(keys), value))
    return records


def expected_reason(record: Record, limits: Limits) -> str | None:
    """The reason the worker owes ``record``, or None when it must be processed."""
    try:
        event = decode_event(record.value, limits)
    except DecodeError as err:
        return err.reason
    return None if event.item_id in CATALOG_IDS else UNKNOWN_ITEM


@WORKER_SETTINGS
@given(
    records=topic_records(),
    batch_size=st.integers(1, 25),
    limits=st.sampled_from(LIMITS),
)
def test_worker_fed_any_mix_never_raises_and_accounts_for_every_record(
    make_worker: Callable[..., Any], records: list[Record], batch_size: int, limits: Limits
) -> None:
    rig = make_worker(records, batch_size=batch_size, limits=limits)
    for _ in range(len(records) + 1):  # every step consumes at least one record
        if rig.source.exhausted:
            break
        rig.worker.step()
    assert rig.source.exhausted

    totals = rig.worker.totals
    produced = len(records)
    assert totals.consumed == produced
    assert totals.processed + totals.rejected == produced
    assert rig.sample("freshrec_events_consumed_total") == produced
    assert rig.sample("freshrec_events_processed_total") == totals.processed
    by_reason = {r: rig.sample("freshrec_events_rejected_total", reason=r) for r in WORKER_REASONS}
    assert sum(by_reason.values()) == totals.rejected

    # The DLQ holds exactly the rejected records, unchanged, each with the reason it is owed.
    owed = [(rec, expected_reason(rec, limits)) for rec in records]
    rejected = [(rec, reason) for rec, reason in owed if reason is not None]
    assert rig.dlq.letters == rejected
    assert len(rig.dlq.letters) == totals.rejected
    assert Counter(reason for _, reason in rejected) == {r: n for r, n in by_reason.items() if n}
    assert all(reason in WORKER_REASONS for _, reason in rig.dlq.letters)
    # ... and every partition is committed to its end.
    ends = {(TOPIC, r.partition): r.offset + 1 for r in records}
    assert rig.source.committed == ends
