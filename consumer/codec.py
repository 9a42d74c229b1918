"""msgpack codecs for events, items and user profiles, enforcing every validation rule of
DESIGN §3.

Decoding never lets a bad record through and never crashes on one: it raises
:class:`DecodeError` whose ``reason`` is a short label (the ``reason`` of
``freshrec_events_rejected_total`` and of the DLQ's ``freshrec.error`` header), one of
:data:`REASONS`:

``record_too_large``
    the value is over ``Limits.max_record_bytes`` (checked before any parsing);
``not_msgpack``
    a null value, bytes that are not one complete msgpack object, a string that is not UTF-8,
    or nesting deeper than msgpack's unpacker allows (1024 levels: a deep structure is refused
    there, so decoding never recurses without bound);
``not_a_map``
    msgpack, but not a map;
``bad_version``
    ``v`` absent or not the integer 1;
``missing_field``
    a required field absent or nil (``ts`` included);
``wrong_type``
    a field, or a key of the map, of the wrong msgpack type;
``bad_id``
    an id that is empty or over ``Limits.max_id_bytes`` UTF-8 bytes;
``unknown_type``
    an event ``type`` outside the contract's five;
``non_finite_value``
    a NaN or infinite ``value`` (or item attribute);
``bad_ts``
    a negative ``ts``, or one more than ``Limits.max_future_ms`` ahead of the clock.

Details (the DLQ's ``freshrec.error.detail``) quote the offending value only in a bounded
preview, so a huge or deeply nested value costs neither memory nor recursion to describe.
"""

from __future__ import annotations

import math
import reprlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from consumer.exceptions import DecodeError
from learner.types import (
    EVENT_TYPES,
    Event,
    EventType,
    Item,
    ItemDeletion,
    ProfileDeletion,
    UserProfile,
)

__all__ = [
    "REASONS",
    "SCHEMA_VERSION",
    "Limits",
    "decode_event",
    "decode_item",
    "decode_user",
    "encode_event",
    "encode_item",
    "encode_user",
]

SCHEMA_VERSION = 1

# Reasons, as they appear in metrics and DLQ headers.
TOO_LARGE = "record_too_large"
NOT_MSGPACK = "not_msgpack"
NOT_A_MAP = "not_a_map"
BAD_VERSION = "bad_version"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_ID = "bad_id"
UNKNOWN_TYPE = "unknown_type"
NON_FINITE_VALUE = "non_finite_value"
BAD_TS = "bad_ts"
REASONS = frozenset(
    {
        TOO_LARGE,
        NOT_MSGPACK,
        NOT_A_MAP,
        BAD_VERSION,
        MISSING_FIELD,
        WRONG_TYPE,
        BAD_ID,
        UNKNOWN_TYPE,
        NON_FINITE_VALUE,
        BAD_TS,
    }
)

# Previews of bad values in details: a few levels and characters, whatever the input holds
# (builtin repr of a value nested 1000 levels deep raises RecursionError).
_preview = reprlib.Repr()
_preview.maxlevel = 3
_preview.maxstring = _preview.maxother = 64


@dataclass(frozen=True)
class Limits:
    """What makes a record bad; all configurable from the worker's settings."""

    max_record_bytes: int = 1 << 20
    max_id_bytes: int = 256
    max_future_ms: int = 86_400_000


def _unpack_map(value: bytes | None, limits: Limits) -> dict[str, Any]:
    if value is None:
        raise DecodeError(NOT_MSGPACK, "null value")
    if len(value) > limits.max_record_bytes:
        raise DecodeError(TOO_LARGE, f"{len(value)} bytes > {limits.max_record_bytes}")
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except msgpack.StackError as err:
        raise DecodeError(NOT_MSGPACK, "nested deeper than msgpack allows") from err
    except Exception as err:  # msgpack raises several unrelated types for bad bytes
        raise DecodeError(NOT_MSGPACK, type(err).__name__) from err
    if not isinstance(obj, dict):
        raise DecodeError(NOT_A_MAP, type(obj).__name__)
    if not all(isinstance(k, str) for k in obj):
        raise DecodeError(WRONG_TYPE, "map keys must be strings")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
        raise DecodeError(BAD_VERSION, f"v={_preview.repr(version)}")
    return obj


def _require(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise DecodeError(MISSING_FIELD, name)
    return obj[name]


def _id(obj: Mapping[str, Any], name: str, limits: Limits) -> str:
    value = _require(obj, name)
    if not isinstance(value, str):
        raise DecodeError(WRONG_TYPE, f"{name} is {type(value).__name__}, not str")
    size = len(value.encode("utf-8"))
    if size == 0 or size > limits.max_id_bytes:
        raise DecodeError(BAD_ID, f"{name} has {size} bytes (1..{limits.max_id_bytes})")
    return value


def _ts(obj: Mapping[str, Any], limits: Limits, now_ms: int | None) -> int:
    ts = _require(obj, "ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise DecodeError(WRONG_TYPE, f"ts is {type(ts).__name__}, not int")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < 0:
        raise DecodeError(BAD_TS, f"ts={ts} is negative")
    if ts > now + limits.max_future_ms:
        raise DecodeError(BAD_TS, f"ts={ts} is more than {limits.max_future_ms} ms ahead")
    return ts


def decode_event(
    value: bytes | None, limits: Limits = Limits(), now_ms: int | None = None
) -> Event:
    """Decode and validate one event record.

    Examples
    --------
    >>> raw = encode_event(Event("e1", "u1", "i1", "click", None, 1000))
    >>> decode_event(raw).item_id
    'i1'
    >>> decode_event(b"\\xc1")
    Traceback (most recent call last):
    ...
    consumer.exceptions.DecodeError: not_msgpack: FormatError
    """
    obj = _unpack_map(value, limits)
    event_id = _id(obj, "event_id", limits)
    user_id = _id(obj, "user_id", limits)
    item_id = _id(obj, "item_id", limits)
    kind = _require(obj, "type")
    if not isinstance(kind, str):
        raise DecodeError(WRONG_TYPE, f"type is {type(kind).__name__}, not str")
    if kind not in EVENT_TYPES:
        raise DecodeError(UNKNOWN_TYPE, kind[:64])
    raw_value = obj.get("value")
    number: float | None = None
    if raw_value is not None:
        if not isinstance(raw_value, int | float) or isinstance(raw_value, bool):
            raise DecodeError(WRONG_TYPE, f"value is {type(raw_value).__name__}, not float")
        number = float(raw_value)
        if not math.isfinite(number):
            raise DecodeError(NON_FINITE_VALUE, repr(number))
    etype: EventType = kind
    return Event(event_id, user_id, item_id, etype, number, _ts(obj, limits, now_ms))


def encode_event(event: Event) -> bytes:
    """The contract's msgpack map for an event."""
    return bytes(
        msgpack.packb(
            {
                "v": SCHEMA_VERSION,
                "event_id": event.event_id,
                "user_id": event.user_id,
                "item_id": event.item_id,
                "type": event.type,
                "value": event.value,
                "ts": event.ts,
            }
        )
    )


def _attributes(
    obj: Mapping[str, Any], *, required: bool = False
) -> dict[str, str | float | int | list[str]]:
    raw = _require(obj, "attributes") if required else obj.get("attributes")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError(WRONG_TYPE, "attributes is not a map")
    out: dict[str, str | float | int | list[str]] = {}
    for key, value in raw.items():
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        ok = ok or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not isinstance(key, str) or not ok:
            raise DecodeError(WRONG_TYPE, f"attribute {_preview.repr(key)} has an unsupported type")
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(NON_FINITE_VALUE, f"attribute {_preview.repr(key)}")
        out[key] = value
    return out


def _tombstone_key(key: bytes | None, limits: Limits) -> str:
    if not key:
        raise DecodeError(BAD_ID, "tombstone without a key")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError(BAD_ID, "tombstone key is not UTF-8") from err
    if len(key) > limits.max_id_bytes:
        raise DecodeError(BAD_ID, f"tombstone key has {len(key)} bytes")
    return text


def decode_item(
    key: bytes | None, value: bytes | None, limits: Limits = Limits(), now_ms: int | None = None
) -> Item | ItemDeletion:
    """Decode an item record; a null value is a tombstone that deletes the keyed item.

    Examples
    --------
    >>> decode_item(b"i7", None)
    ItemDeletion(item_id='i7', ts=0)
    >>> decode_item(b"i7", encode_item(Item("i7", "Heat (1995)"))).title
    'Heat (1995)'
    """
    if value is None:
        return ItemDeletion(_tombstone_key(key, limits))
    obj = _unpack_map(value, limits)
    item_id = _id(obj, "item_id", limits)
    title = _require(obj, "title")
    if not isinstance(title, str):
        raise DecodeError(WRONG_TYPE, "title is not str")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise DecodeError(WRONG_TYPE, "text is not str")
    image = obj.get("image")
    if image is not None and not isinstance(image, bytes):
        raise DecodeError(WRONG_TYPE, "image is not bytes")
    ts = _ts(obj, limits, now_ms)
    return Item(item_id, title, text, _attributes(obj), image, ts)


def encode_item(item: Item) -> bytes:
    """The contract's msgpack map for an item."""
    return bytes(
        msgpack.packb(
            {
                "v": SCHEMA_VERSION,
                "item_id": item.item_id,
                "title": item.title,
                "text": item.description,
                "attributes": dict(item.attributes),
                "image": item.image,
                "ts": item.ts,
            },
            use_bin_type=True,
        )
    )


def decode_user(
    key: bytes | None, value: bytes | None, limits: Limits = Limits(), now_ms: int | None = None
) -> UserProfile | ProfileDeletion:
    """Decode a record of the users topic: ``{v: 1, user_id, attributes, ts}``, the attributes
    a map of strings to a string, a number or a list of strings (the same rules as an item's);
    a null value is a tombstone that deletes the keyed user's profile.

    Examples
    --------
    >>> decode_user(b"u7", None)
    ProfileDeletion(user_id='u7', ts=0)
    >>> decode_user(b"u7", encode_user(UserProfile("u7", {"age": 31}))).attributes
    {'age': 31}
    >>> decode_user(b"u7", encode_user(UserProfile("", {"age": 31})))
    Traceback (most recent call last):
    ...
    consumer.exceptions.DecodeError: bad_id: user_id has 0 bytes (1..256)
    """
    if value is None:
        return ProfileDeletion(_tombstone_key(key, limits))
    obj = _unpack_map(value, limits)
    user_id = _id(obj, "user_id", limits)
    attributes = _attributes(obj, required=True)
    return UserProfile(user_id, attributes, _ts(obj, limits, now_ms))


def encode_user(profile: UserProfile) -> bytes:
    """The contract's msgpack map for a user profile."""
    return bytes(
        msgpack.packb(
            {
                "v": SCHEMA_VERSION,
                "user_id": profile.user_id,
                "attributes": dict(profile.attributes),
                "ts": profile.ts,
            },
            use_bin_type=True,
        )
    )
