"""``freshrec explain``: ask the worker that holds a user why an item scores what it does.

A user's state lives on the one worker that owns the partition of their events, so the
command finds that worker in the consumer group (the member whose assignment holds the
partition Kafka's default partitioner gives the user id), asks its ``/explain`` endpoint
(``--explain-endpoint``, on the metrics port), and prints the answer. ``--worker URL`` skips
the search, for a worker behind a port-forward or a load balancer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from consumer.config import WorkerConfig
from consumer.exceptions import ConfigError, SourceError

__all__ = ["fetch_explanation", "format_explanation", "owner_url", "owning_host"]


def owning_host(members: Iterable[Mapping[str, Any]], topic: str, partition: int) -> str | None:
    """The host of the group member assigned ``topic``'s ``partition`` (as the broker saw
    it), from ``KafkaAdminClient.describe_groups``'s members.

    Examples
    --------
    >>> members = [{"client_host": "/10.0.0.7", "member_assignment":
    ...             {"assigned_partitions": [{"topic": "ev", "partitions": [0, 2]}]}},
    ...            {"client_host": "/10.0.0.8", "member_assignment":
    ...             {"assigned_partitions": [{"topic": "ev", "partitions": [1]}]}}]
    >>> owning_host(members, "ev", 2), owning_host(members, "ev", 5)
    ('10.0.0.7', None)
    """
    for member in members:
        for topic_name, partitions in _assigned(member.get("member_assignment")):
            if topic_name == topic and partition in partitions:
                return str(member.get("client_host", "")).lstrip("/") or None
    return None


def _assigned(assignment: Any) -> list[tuple[str, list[int]]]:
    """(topic, partitions) pairs of a decoded consumer assignment, dict or struct."""
    if assignment is None or isinstance(assignment, bytes | bytearray):
        return []
    if isinstance(assignment, Mapping):
        entries = assignment.get("assigned_partitions") or assignment.get("assignment") or []
    else:
        entries = getattr(assignment, "assigned_partitions", None) or getattr(
            assignment, "assignment", []
        )
    out = []
    for entry in entries:
        if isinstance(entry, Mapping):
            out.append((str(entry["topic"]), [int(p) for p in entry["partitions"]]))
        else:
            topic, partitions = entry[0], entry[1]
            out.append((str(topic), [int(p) for p in partitions]))
    return out


def owner_url(config: WorkerConfig, user_id: str, settings: Mapping[str, Any]) -> str:
    """The base URL of the worker that holds ``user_id``: found through the group's current
    assignment; the worker's metrics port is taken to be ``config.metrics_port``."""
    from kafka import KafkaAdminClient

    from consumer.inspect_user import user_partition

    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers.split(","), **settings)
    try:
        topics = admin.describe_topics([config.events_topic])
        partitions = topics[0]["partitions"] if topics else []
        if not partitions:
            raise SourceError(f"topic {config.events_topic!r} does not exist")
        partition = user_partition(user_id, len(partitions))
        group = admin.describe_groups([config.group_id]).get(config.group_id, {})
    finally:
        admin.close()
    host = owning_host(group.get("members", []), config.events_topic, partition)
    if host is None:
        raise SourceError(
            f"no member of group {config.group_id!r} owns {config.events_topic} partition "
            f"{partition} (user {user_id!r}'s) right now; is a worker running? "
            "(or give --worker URL)"
        )
    return f"http://{host}:{config.metrics_port}"


def fetch_explanation(base_url: str, user_id: str, item_id: str, top: int) -> dict[str, Any]:
    """GET ``/explain`` of the worker at ``base_url``; errors become :class:`SourceError`."""
    query = urllib.parse.urlencode({"user": user_id, "item": item_id, "top": top})
    url = f"{base_url.rstrip('/')}/explain?{query}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as err:
        try:
            reason = json.loads(err.read()).get("error", err.reason)
        except ValueError:
            reason = err.reason
        if err.code == 404 and "--explain-endpoint" in str(reason):
            raise ConfigError(f"{base_url}: {reason}") from err
        raise SourceError(f"{base_url}: {reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise SourceError(f"cannot reach the worker at {base_url}: {err}") from err


def format_explanation(ex: Mapping[str, Any], titles: Mapping[str, str] | None = None) -> str:
    """An explanation (``Explanation.to_dict()``) as readable lines.

    Examples
    --------
    >>> ex = {"user_id": "u1", "item_id": "b", "events": 12, "strategy": "personal",
    ...       "alpha": 1.0, "personal": 0.9, "trending_scaled": 0.2, "final": 0.9,
    ...       "rank": 2, "eligible": 40, "excluded": None, "model_version": "m/head-3",
    ...       "parts": [{"name": "content similarity", "value": 0.7, "note": ""},
    ...                 {"name": "item bias", "value": 0.2, "note": ""}],
    ...       "history": [{"item_id": "a", "total": 0.4, "content": 0.3,
    ...                    "cooccurrence": 0.1, "weight": 1.0}], "because": "a"}
    >>> print(format_explanation(ex, {"a": "Alien", "b": "Blade Runner"}))
    user u1: 12 events, personal list, model m/head-3
    item b (Blade Runner): rank 2 of 40 items the user can get, score 0.9000
    <BLANKLINE>
    personal score 0.9000 =
      content similarity     +0.7000
      item bias              +0.2000
    <BLANKLINE>
    because Alien: the history items that add most to this item's score
       1. Alien                                    +0.4000  (content +0.3000, co-occ. +0.1000)
    """
    titles = titles or {}

    def name(item_id: str) -> str:
        title = titles.get(item_id)
        return f"{item_id} ({title})" if title else item_id

    lines = [
        f"user {ex['user_id']}: {ex['events']} events, {ex['strategy']} list, "
        f"model {ex['model_version']}"
    ]
    if ex["excluded"]:
        lines.append(
            f"item {name(ex['item_id'])}: never recommended to this user ({ex['excluded']})"
        )
    else:
        lines.append(
            f"item {name(ex['item_id'])}: rank {ex['rank']} of {ex['eligible']} items the "
            f"user can get, score {ex['final']:.4f}"
        )
    lines += ["", f"personal score {ex['personal']:.4f} ="]
    lines += [f"  {p['name']:<22} {p['value']:+.4f}" for p in ex["parts"]]
    if ex["alpha"] < 1.0:
        lines += [
            "",
            f"popularity blend: {ex['alpha']:.2f} x personal (min-max scaled) + "
            f"{1 - ex['alpha']:.2f} x trending ({ex['trending_scaled']:.4f}), as the user has "
            "fewer events than --min-events",
        ]
    if ex["history"]:
        because = titles.get(ex["because"], ex["because"])
        lines += ["", f"because {because}: the history items that add most to this item's score"]
        for i, h in enumerate(ex["history"], 1):
            lines.append(
                f"  {i:2d}. {titles.get(h['item_id'], h['item_id'])[:40]:<40} {h['total']:+.4f}  "
                f"(content {h['content']:+.4f}, co-occ. {h['cooccurrence']:+.4f})"
            )
    else:
        lines += ["", "no history: the score comes from the item alone"]
    return "\n".join(lines)
