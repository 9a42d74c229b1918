"""A live terminal view of recommendations streaming out of the worker."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from consumer.codec import decode_item
from consumer.exceptions import DecodeError
from consumer.source import ItemFeed, assign_whole_topic
from learner.types import Item
from serving.codec import decode_recommendation

__all__ = ["catalog_titles", "scrape", "watch"]


def scrape(url: str) -> dict[str, float]:
    """Sum of each metric family's samples at ``url`` ({} when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _consumer(bootstrap: str, kafka_settings: Mapping[str, Any]) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, **kafka_settings
    )


def catalog_titles(bootstrap: str, topic: str, kafka_settings: Mapping[str, Any]) -> dict[str, str]:
    """Item id -> title of every live item on the items topic (read to its end once)."""
    feed = ItemFeed(_consumer(bootstrap, kafka_settings), topic)
    titles: dict[str, str] = {}
    try:
        for records in feed.read_to_end():
            for r in records:
                try:
                    item = decode_item(r.key, r.value)
                except DecodeError:
                    continue
                if isinstance(item, Item):
                    titles[item.item_id] = item.title
    finally:
        feed.close()
    return titles


def watch(
    *,
    bootstrap_servers: str,
    topic_prefix: str,
    metrics_url: str,
    users: int = 5,
    duration_s: float = 0.0,
    per_user: int = 5,
    kafka_settings: Mapping[str, Any] | None = None,
) -> int:
    """Follow the output topic until ``duration_s`` passes (0: until Ctrl-C). ``kafka_settings``
    (security, from ``consumer.security.kafka_security_settings``) go to the consumers."""
    settings = dict(kafka_settings or {})
    titles = catalog_titles(bootstrap_servers, f"{topic_prefix}items", settings)
    consumer = _consumer(bootstrap_servers, settings)
    assign_whole_topic(consumer, f"{topic_prefix}recommendations", from_beginning=False)
    latest: OrderedDict[str, dict[str, Any]] = OrderedDict()
    received = 0
    start = last_draw = time.monotonic()
    prev = scrape(metrics_url)
    prev_t = start
    tty = sys.stdout.isatty()
    try:
        while duration_s <= 0 or time.monotonic() - start < duration_s:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    msg = decode_recommendation(r.value)
                    latest[msg["user_id"]] = msg
                    latest.move_to_end(msg["user_id"])
                    received += 1
                    while len(latest) > users:
                        latest.popitem(last=False)
            now = time.monotonic()
            if now - last_draw < (1.0 if tty else 5.0):
                continue
            cur = scrape(metrics_url)
            dt = max(1e-6, now - prev_t)

            published = "freshrec_recommendations_published_total"
            rates = {name: (cur.get(name, 0.0) - prev.get(name, 0.0)) / dt for name in cur}

            lines = [
                f"freshrec watch - {received} recommendation messages in {now - start:.0f}s"
                f" - metrics: {metrics_url}",
                f"events processed {cur.get('freshrec_events_processed_total', 0):.0f}"
                f" ({rates.get('freshrec_events_processed_total', 0.0):.0f}/s), "
                f"rejected {cur.get('freshrec_events_rejected_total', 0):.0f}, "
                f"lists published {rates.get(published, 0.0):.0f}/s, "
                f"online hit rate {cur.get('freshrec_online_hit_rate', 0):.3f}, "
                f"users {cur.get('freshrec_users_in_state', 0):.0f}",
                "",
            ]
            for uid, msg in reversed(latest.items()):
                lines.append(f"user {uid}  [{msg['strategy']}, model {msg['model_version']}]")
                for rank, it in enumerate(msg["items"][:per_user], 1):
                    name = titles.get(it["item_id"], it["item_id"])
                    because = it.get("because")
                    why = f"   because: {titles.get(because, because)}" if because else ""
                    lines.append(f"  {rank}. {name[:48]:<48} {it['score']:7.3f}{why[:60]}")
            if tty:
                sys.stdout.write("\x1b[2J\x1b[H" + "\n".join(lines) + "\n")
            else:
                sys.stdout.write("\n".join(lines) + "\n\n")
            sys.stdout.flush()
            prev, prev_t, last_draw = cur, now, now
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return received
