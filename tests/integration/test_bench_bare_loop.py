"""The benches' bare loop against the real broker: a consumer that has joined its group but gets
no record is replaced by a new one in the same group, which takes over at the committed offsets
and consumes every event exactly once; without a replacement left, the loop says so.

kafka-python 3.0.12's consumer did this twice on 2026-12-04 (bench/kafka_rig.py's
``bare_loop``). The hang itself does not reproduce on demand, so these tests stand in for it
with a first consumer that subscribes to a topic nobody writes to: from the loop's side, the
same thing (a group member that polls and never gets a record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from bench.kafka_rig import Broker, bare_loop, produce_all
from tests.integration.helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EVENTS = 600


@dataclass
class FirstConsumerGetsNothing(Broker):
    """The rig's broker, except that its first consumer subscribes to ``silent``, an empty
    topic, instead of the one asked for."""

    silent: str = ""
    opened: int = 0

    def consumer(self, topic: str, **overrides: Any) -> Any:
        self.opened += 1
        return super().consumer(self.silent if self.opened == 1 else topic, **overrides)


def _broker_with_events(bootstrap: str, prefix: str) -> FirstConsumerGetsNothing:
    broker = FirstConsumerGetsNothing(bootstrap, silent=f"{prefix}silent")
    broker.create_topics({f"{prefix}events": 2, f"{prefix}out": 2, f"{prefix}silent": 1})
    events = [
        (str(i % 37).encode(), msgpack.packb({"user_id": f"u{i % 37}", "item_id": "i1", "ts": i}))
        for i in range(EVENTS)
    ]
    produce_all(broker, f"{prefix}events", events, label="test")
    return broker


def test_a_consumer_that_gets_nothing_is_replaced_and_every_event_is_consumed_once(
    bootstrap: str, prefix: str
) -> None:
    broker = _broker_with_events(bootstrap, prefix)
    done, seconds = bare_loop(
        broker,
        f"{prefix}events",
        f"{prefix}out",
        EVENTS,
        group=f"{prefix}bare",
        batch_size=100,
        timeout_s=120,
        stall_s=3.0,
        reopen=1,
    )
    assert broker.opened == 2
    assert done == EVENTS
    assert seconds > 0
    assert len(read_all(bootstrap, f"{prefix}out")) == EVENTS


def test_without_a_replacement_left_the_loop_names_the_stall(bootstrap: str, prefix: str) -> None:
    broker = _broker_with_events(bootstrap, prefix)
    with pytest.raises(RuntimeError, match=rf"no record of {prefix}events for 3s after 0 of"):
        bare_loop(
            broker,
            f"{prefix}events",
            f"{prefix}out",
            EVENTS,
            group=f"{prefix}bare",
            timeout_s=120,
            stall_s=3.0,
        )
    assert broker.opened == 1
