"""Specifications of serving.gcpause: collector pauses timed by generation, and the start-up
heap frozen out of the collector's walk."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from serving.gcpause import BusyYoungThreshold, GcPauses, freeze_heap
from serving.metrics import WorkerMetrics


def count(metrics: WorkerMetrics, generation: str) -> float:
    value = metrics.registry.get_sample_value(
        "freshrec_gc_pause_seconds_count", {"generation": generation}
    )
    assert value is not None
    return value


def test_each_collection_is_timed_under_its_generation() -> None:
    metrics = WorkerMetrics()
    assert [count(metrics, g) for g in "012"] == [0, 0, 0]  # exported before any pause
    with GcPauses(metrics.gc_pause_seconds):
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    assert count(metrics, "0") >= 1 and count(metrics, "2") >= 2
    total = metrics.registry.get_sample_value("freshrec_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0


def test_pauses_stop_being_timed_once_removed() -> None:
    metrics = WorkerMetrics()
    pauses = GcPauses(metrics.gc_pause_seconds).install()
    pauses.install()  # twice is once
    assert gc.callbacks.count(pauses._callback) == 1
    pauses.remove()
    gc.collect(2)
    assert count(metrics, "2") == 0
    assert pauses._callback not in gc.callbacks


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # other tests run with the collector as usual


def test_freezing_moves_what_lives_now_out_of_the_collectors_walk(unfrozen: None) -> None:
    before = [["kept"]]  # a container the collector tracks
    frozen = freeze_heap()
    assert frozen == gc.get_freeze_count() > 0
    walked = gc.get_objects()  # generations 0-2: what a collection walks
    assert not any(o is before for o in walked)
    after = [["new"]]
    assert any(o is after for o in gc.get_objects())


def test_a_frozen_object_is_still_freed_when_its_last_reference_goes(unfrozen: None) -> None:
    import weakref

    class Node:
        pass

    node = Node()
    gone = weakref.ref(node)
    freeze_heap()
    del node
    assert gone() is None


def test_a_long_pause_is_logged_with_what_it_collected(caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics()
    with caplog.at_level("WARNING", logger="serving.gcpause"):
        with GcPauses(metrics.gc_pause_seconds, log_over_s=0.0):  # every pause counts as long
            gc.collect(1)
        long = [r.getMessage() for r in caplog.records]
        caplog.clear()
        with GcPauses(metrics.gc_pause_seconds):  # the default, 100 ms: far above a young one
            gc.collect(0)
        short = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("garbage collection of generation 1 took ") for m in long), long
    assert all("objects collected" in m for m in long)
    assert not [m for m in short if "generation 0" in m]


def test_a_worker_tunes_the_collector_once_started(unfrozen: None) -> None:
    from serving.gcpause import tune_collector

    before = gc.get_threshold()
    try:
        tune_collector(freeze=False, young_threshold=12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() == 0  # not asked to freeze
        tune_collector(freeze=True, young_threshold=0)  # 0: the threshold is left alone
        assert gc.get_threshold()[0] == 12_345 and gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)


def test_the_busy_threshold_holds_only_while_behind_and_then_gives_back_the_one_before() -> None:
    before = gc.get_threshold()
    busy = BusyYoungThreshold(40_000)
    try:
        gc.set_threshold(1_234, *before[1:])  # e.g. --gc-young-threshold 1234
        busy.update(False)
        assert gc.get_threshold()[0] == 1_234 and not busy.active
        busy.update(True)
        busy.update(True)  # still behind: nothing changes, the threshold to return to kept
        assert gc.get_threshold() == (40_000, *before[1:]) and busy.active
        busy.update(False)
        assert gc.get_threshold() == (1_234, *before[1:]) and not busy.active
    finally:
        gc.set_threshold(*before)


def test_a_busy_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        BusyYoungThreshold(0)
