"""The named poison corpus (tests/fixtures/poison.py) through an in-memory worker: every case
gets the outcome it states, and the worker carries on."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from consumer.codec import REASONS, Limits
from consumer.source import Record
from consumer.worker import UNKNOWN_ITEM
from tests.fixtures.poison import PROCESSED, PoisonCase, poison_corpus

pytestmark = pytest.mark.timeout(120)

TOPIC = "freshrec.events"
LIMITS = Limits(max_record_bytes=64 << 10)


def corpus() -> list[PoisonCase]:
    """The corpus for the unit worker: catalog item "a", this machine's clock."""
    return poison_corpus(now_ms=int(time.time() * 1000), item_id="a", limits=LIMITS)


def as_records(cases: list[PoisonCase]) -> list[Record]:
    return [Record(TOPIC, 0, n, case.key, case.value) for n, case in enumerate(cases)]


def test_corpus_covers_every_kind_of_poison_the_issue_names() -> None:
    cases = corpus()
    names = " ".join(case.name for case in cases)
    for kind in [
        "truncated",
        "array",  # msgpack that is not a map
        "nested_10000_deep",
        "10_kib",  # a huge id
        "record_over_max_event_bytes",
        "value_nan",
        "value_plus_inf",
        "value_minus_inf",
        "invalid_utf8",
        "empty_user_id",
        "duplicate_event_id",
        "ts_two_days_ahead",
        "ts_minus_one",
        "ts_of_movielens_1997",
        "key_of_another_user",
        "null_value",
    ]:
        assert kind in names, kind
    assert sum(case.expected == "wrong_type" for case in cases) >= 10  # one per field at least


def test_every_stated_outcome_is_processed_or_a_known_reason() -> None:
    cases = corpus()
    assert len({case.name for case in cases}) == len(cases)
    assert {case.expected for case in cases} <= REASONS | {UNKNOWN_ITEM, PROCESSED}


@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_each_corpus_record_gets_its_stated_outcome_and_the_worker_carries_on(
    make_worker: Callable[..., Any], batch_size: int
) -> None:
    cases = corpus()
    records = as_records(cases)
    rig = make_worker(records, batch_size=batch_size, limits=LIMITS)
    rig.worker.run(until=lambda: rig.source.exhausted)

    totals = rig.worker.totals
    expected_rejected = [
        (rec, c.expected) for rec, c in zip(records, cases, strict=True) if c.rejected
    ]
    assert totals.consumed == len(cases)
    assert totals.processed == sum(not c.rejected for c in cases)
    assert totals.processed + totals.rejected == totals.consumed
    got = {letter.offset: reason for letter, reason in rig.dlq.letters}
    wanted = {rec.offset: reason for rec, reason in expected_rejected}
    mismatched = {
        cases[offset].name: (wanted.get(offset, PROCESSED), got.get(offset, PROCESSED))
        for offset in set(got) | set(wanted)
        if got.get(offset) != wanted.get(offset)
    }
    assert not mismatched, "case: (stated, got)"
    assert rig.dlq.letters == expected_rejected  # the original records, byte for byte
    assert rig.source.committed == {(TOPIC, 0): len(cases)}


def test_a_duplicate_event_is_processed_both_times_and_published_for(
    make_worker: Callable[..., Any],
) -> None:
    twice = [c for c in corpus() if c.name.startswith("duplicate_event_id")]
    assert len(twice) == 2 and twice[0].value == twice[1].value
    rig = make_worker(as_records(twice), limits=LIMITS)
    report = rig.worker.step()
    assert (report.processed, report.rejected, report.published) == (2, 0, 1)
