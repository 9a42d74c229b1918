"""The operator commands against the real broker: `freshrec topics create` and
`freshrec inspect --user`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from consumer.cli import main
from consumer.config import WorkerConfig
from consumer.inspect_user import user_partition
from consumer.topics import topic_specs
from learner.types import ScoredItem, UserRecommendation
from serving.publisher import KafkaPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def admin(bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    yield client
    client.close()


def topic_config(admin: KafkaAdminClient, topic: str, key: str) -> str | None:
    """A topic's own setting of ``key`` (None: the broker's default applies)."""
    response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    entry = response["topic"][topic].get(key)
    return None if entry is None else str(entry["value"])


def test_topics_create_makes_every_topic_with_its_contract_then_leaves_them_alone(
    bootstrap: str, prefix: str, admin: KafkaAdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["topics", "create", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main([*argv, "--partitions", "3"]) == 0
    out = capsys.readouterr().out
    config = WorkerConfig(topic_prefix=prefix, partitions=3)
    specs = topic_specs(config)
    described = {d["name"]: d for d in admin.describe_topics(list(specs))}
    for name, (partitions, configs) in specs.items():
        assert len(described[name]["partitions"]) == partitions, name
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "created" in row and f" {partitions} " in row, row
        for key, value in configs.items():
            assert topic_config(admin, name, key) == value, (name, key)
    assert topic_config(admin, config.items_topic, "cleanup.policy") == "compact"
    assert topic_config(admin, config.events_topic, "cleanup.policy") in (None, "delete")

    # A second run changes nothing and says so, whatever --partitions says now.
    assert main([*argv, "--partitions", "5"]) == 0
    again = capsys.readouterr().out
    events_row = next(line for line in again.splitlines() if line.startswith(config.events_topic))
    assert "exists" in events_row and " 3 " in events_row
    assert "created" not in again


def publish(bootstrap: str, topic: str, lists: Sequence[UserRecommendation]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        publisher = KafkaPublisher(producer, topic)
        publisher.publish(lists)
        publisher.flush()
    finally:
        producer.close()


def rec(user: str, items: Sequence[str], ts: int, because: str | None = None) -> UserRecommendation:
    scored = [ScoredItem(item, 1.0 - i / 10, because) for i, item in enumerate(items)]
    return UserRecommendation(user, scored, "personal", "m1", ts)


def test_inspect_prints_the_users_current_list_and_then_each_change(
    bootstrap: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main(["topics", "create", *argv, "--partitions", "4"]) == 0
    topic = f"{prefix}recommendations"
    # Other users' lists share the partition or not; only u7's must be printed.
    others = [rec(f"other{i}", ["x"], 1) for i in range(20)]
    assert {user_partition(r.user_id, 4) for r in others} >= {user_partition("u7", 4)}
    publish(bootstrap, topic, [rec("u7", ["a", "b"], 1000), *others, rec("u7", ["b", "c"], 2000)])
    capsys.readouterr()

    assert main(["inspect", *argv, "--user", "u7", "--once", "--ids"]) == 0
    out = capsys.readouterr().out
    assert out.count("user u7") == 1  # the current list only, not the history
    assert " 1. b " in out and " 2. c " in out and "other" not in out

    # Following: a new list arrives while inspect runs, and its changes are shown.
    follower = threading.Thread(
        target=main, args=(["inspect", *argv, "--user", "u7", "--ids", "--duration", "8"],)
    )
    follower.start()
    time.sleep(3)  # let it read what is there first; the assertion below does not rely on it
    publish(bootstrap, topic, [rec("u7", ["d", "b"], 3000, because="a")])
    follower.join(30)
    assert not follower.is_alive()
    lines = capsys.readouterr().out
    newest = lines[lines.rindex("user u7") :]
    assert "1. d" in newest and "new" in newest and "because a" in newest
    assert "2. b" in newest and "down 1" in newest.split("2. b")[1].splitlines()[0]
    assert "dropped: c" in newest


def test_inspect_once_for_a_user_without_lists_exits_1(
    bootstrap: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main(["topics", "create", *argv, "--partitions", "2"]) == 0
    assert main(["inspect", *argv, "--user", "nobody", "--once"]) == 1
    assert "no recommendations yet" in capsys.readouterr().err


def test_inspect_json_prints_the_messages_as_published(
    bootstrap: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main(["topics", "create", *argv, "--partitions", "2"]) == 0
    publish(bootstrap, f"{prefix}recommendations", [rec("u1", ["a"], 5)])
    capsys.readouterr()
    assert main(["inspect", *argv, "--user", "u1", "--once", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    msg = json.loads(line)
    assert msg["user_id"] == "u1" and msg["items"][0]["item_id"] == "a"
    assert msg["event_ts"] == 5 and msg["generated_ts"] > msg["event_ts"]
