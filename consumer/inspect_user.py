"""``freshrec inspect --user U``: one user's recommendation lists, as they change.

The recommendations topic is keyed by user id with Kafka's default partitioner (murmur2, as
the Java client and kafka-python use), so a user's lists are all in one partition: only that
partition is read, from its beginning (the compacted topic keeps at least the latest list),
with no consumer group and no commits. Each new list is printed with what changed since the
one before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from consumer.exceptions import SourceError

__all__ = ["describe_change", "format_list", "inspect_user", "user_partition"]


def user_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``user_id``.

    Examples
    --------
    >>> user_partition("u1", 8), user_partition("u1", 1)
    (0, 0)
    >>> sorted({user_partition(f"u{i}", 8) for i in range(100)}) == list(range(8))
    True
    """
    from kafka.partitioner.default import murmur2

    return int(murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def describe_change(previous: Sequence[str], current: Sequence[str]) -> list[str]:
    """Per item of ``current``: ``new``, ``=``, ``up N`` or ``down N`` against ``previous``.

    Examples
    --------
    >>> describe_change(["a", "b", "c"], ["b", "a", "d"])
    ['up 1', 'down 1', 'new']
    >>> describe_change([], ["a"])
    ['new']
    """
    before = {item: rank for rank, item in enumerate(previous)}
    out = []
    for rank, item in enumerate(current):
        was = before.get(item)
        if was is None:
            out.append("new")
        elif was == rank:
            out.append("=")
        else:
            out.append(f"up {was - rank}" if was > rank else f"down {rank - was}")
    return out


def format_list(
    msg: Mapping[str, Any],
    previous: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
) -> str:
    """A recommendation message as readable lines; with ``previous`` (the item ids of the
    user's list before), each item says how it moved and dropped items are named.

    Examples
    --------
    >>> msg = {"user_id": "u1", "strategy": "personal", "model_version": "m1",
    ...        "event_ts": 1000, "generated_ts": 1250,
    ...        "items": [{"item_id": "i2", "score": 0.5, "because": "i9"},
    ...                  {"item_id": "i1", "score": 0.25, "because": None}]}
    >>> print(format_list(msg, ["i1", "i3"], {"i9": "Heat"}))
    user u1  personal, model m1, generated 1970-01-01T00:00:01.250Z, 250 ms after its event
       1. i2                                             0.500  new     because Heat
       2. i1                                             0.250  down 1
      dropped: i3
    """
    titles = titles or {}
    ids = [it["item_id"] for it in msg["items"]]
    change = describe_change(previous, ids) if previous is not None else [""] * len(ids)
    lag = int(msg["generated_ts"]) - int(msg["event_ts"])
    lines = [
        f"user {msg['user_id']}  {msg['strategy']}, model {msg['model_version']}, generated "
        f"{_iso(int(msg['generated_ts']))}, {lag} ms after its event"
    ]
    for rank, (it, moved) in enumerate(zip(msg["items"], change, strict=True), 1):
        name = titles.get(it["item_id"], it["item_id"])
        because = it.get("because")
        why = f"because {titles.get(because, because)}" if because else ""
        lines.append(f"  {rank:2d}. {name[:44]:<44} {it['score']:7.3f}  {moved:<7} {why}".rstrip())
    if previous is not None:
        dropped = [titles.get(item, item) for item in previous if item not in set(ids)]
        if dropped:
            lines.append("  dropped: " + ", ".join(dropped))
    return "\n".join(lines)


def _iso(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _user_messages(
    consumer: Any, topic: str, user_id: str, deadline: float | None
) -> Iterator[tuple[bool, dict[str, Any]]]:
    """(caught_up, message) for each of the user's lists in their partition, in order;
    ``caught_up`` is False for lists that were already there when reading started. Ends at
    ``deadline`` (monotonic; None: never)."""
    from kafka.structs import TopicPartition

    from serving.codec import decode_recommendation

    partitions = consumer.partitions_for_topic(topic)
    wait_until = time.monotonic() + 30.0
    while not partitions and time.monotonic() < wait_until:
        time.sleep(0.2)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise SourceError(f"topic {topic!r} does not exist")
    tp = TopicPartition(topic, user_partition(user_id, len(partitions)))
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    key = user_id.encode("utf-8")
    while deadline is None or time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200).get(tp, [])
        for record in batch:
            if record.key != key or record.value is None:
                continue
            try:
                msg = decode_recommendation(record.value)
            except ValueError:
                continue
            yield record.offset >= end, msg
        if not batch and consumer.position(tp) >= end:
            yield True, {}  # caught up: lets the caller print the current list


def inspect_user(
    consumer: Any,
    *,
    topic: str,
    user_id: str,
    out: IO[str],
    titles: Mapping[str, str] | None = None,
    once: bool = False,
    duration_s: float = 0.0,
    as_json: bool = False,
) -> int:
    """Print ``user_id``'s current list, then each new one as it arrives (until
    ``duration_s`` passes, 0: until Ctrl-C; ``once``: the current list only). Returns how
    many lists were printed; with ``once``, 0 means the user has none yet."""
    deadline = time.monotonic() + duration_s if duration_s > 0 else None
    latest: dict[str, Any] | None = None
    previous: list[str] | None = None
    printed = 0
    caught_up = False
    for live, msg in _user_messages(consumer, topic, user_id, deadline):
        if not live:
            latest = msg  # still reading what was there before: keep only the newest
            continue
        if not caught_up:
            caught_up = True
            if latest is not None:
                _print(out, latest, None, titles, as_json)
                printed += 1
                previous = [it["item_id"] for it in latest["items"]]
            elif not as_json:
                out.write(f"user {user_id} has no recommendations yet; waiting for one\n")
                out.flush()
            if once:
                return printed
        if not msg:
            continue
        _print(out, msg, previous, titles, as_json)
        printed += 1
        previous = [it["item_id"] for it in msg["items"]]
    return printed


def _print(
    out: IO[str],
    msg: Mapping[str, Any],
    previous: Sequence[str] | None,
    titles: Mapping[str, str] | None,
    as_json: bool,
) -> None:
    if as_json:
        out.write(json.dumps(dict(msg), default=str) + "\n")
    else:
        out.write(format_list(msg, previous, titles) + "\n\n")
    out.flush()
