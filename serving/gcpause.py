"""Python's garbage collector, seen and tamed: each collection's pause timed into a histogram,
and the start-up heap frozen out of the collector's reach.

Why it matters here: after start-up the worker holds about 490k container objects that never
die (torch, transformers and their modules, the catalog). A full (generation 2) collection walks
every one of them, which took 250-420 ms on the 2-core VM. Such a pause stops the worker between
two batches, outside every timed stage, and it was the freshness p99 tail of bench/latency.py.
``gc.freeze()`` after start-up moves those objects to a permanent generation, so a full
collection walks only what the worker created since.

Examples
--------
>>> import gc
>>> from prometheus_client import CollectorRegistry, Histogram
>>> h = Histogram("pause_seconds", "GC pauses", ["generation"], registry=CollectorRegistry())
>>> with GcPauses(h):
...     _ = gc.collect(0)
>>> h.labels(generation="0")._sum.get() > 0
True
"""

from __future__ import annotations

import gc
import logging
import time
from types import TracebackType
from typing import Any

__all__ = [
    "BusyYoungThreshold",
    "GcPauses",
    "freeze_heap",
    "set_young_threshold",
    "tune_collector",
]

log = logging.getLogger(__name__)


class GcPauses:
    """Times every collection while installed (``gc.callbacks``, process-wide), observing its
    seconds into ``histogram`` labelled by ``generation`` ("0", "1", "2"), and logs a warning
    for one of ``log_over_s`` or longer. All three label values exist at zero from the start.
    Use as a context manager, or ``install``/``remove``."""

    def __init__(self, histogram: Any, *, log_over_s: float = 0.1) -> None:
        self.log_over_s = log_over_s
        self._by_generation = [histogram.labels(generation=str(g)) for g in range(3)]
        self._started = 0.0

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def __enter__(self) -> GcPauses:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            seconds = time.perf_counter() - self._started
            self._by_generation[info["generation"]].observe(seconds)
            self._started = 0.0
            if seconds >= self.log_over_s:
                log.warning(
                    "garbage collection of generation %d took %.0f ms (%d objects collected, "
                    "%d tracked now)",
                    info["generation"],
                    1000.0 * seconds,
                    info["collected"],
                    len(gc.get_objects(info["generation"])),
                )


def freeze_heap() -> int:
    """Collect once, then move every surviving object to the permanent generation
    (``gc.freeze``), which later collections skip; returns how many objects are frozen.
    Call it when start-up is done (models and catalog loaded). A frozen object is still freed
    when its last reference goes; only a reference cycle among frozen objects is never
    collected, so freeze what lives as long as the process.

    >>> freeze_heap() > 0
    True
    >>> gc.unfreeze()
    """
    gc.collect()
    gc.freeze()
    # The collector starts a full collection once the objects that survived younger ones
    # reach a quarter of those that survived the last full one. That count still includes
    # the frozen heap until the next full collection, so the first one would wait for
    # ~120k new survivors and take ~160 ms; this one walks nothing and resets the count.
    gc.collect()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d start-up objects frozen out of its reach", frozen)
    return frozen


def set_young_threshold(threshold: int) -> tuple[int, int, int]:
    """Let ``threshold`` container objects (allocations less deallocations) accumulate before
    a young collection (Python's default is 700); 0 leaves the setting alone. Returns the
    thresholds as they were, for a caller that puts them back.

    A 500-event micro-batch holds tens of thousands of objects (events, lists, scores) while it
    runs. With 700, young collections walk them again and again and move them to the older
    generations, which then walk them again; with 50,000 most die before any collection does
    (collector time per batch 5.5 -> 0.9 ms on ml-100k). The price: at light load a young
    collection then comes every few seconds and frees everything that piled up meanwhile,
    50-250 ms at once (500 events/s on the 2-core VM), so the worker keeps Python's default
    unless told otherwise (``--gc-young-threshold``).

    >>> before = set_young_threshold(50_000)
    >>> gc.get_threshold()[0]
    50000
    >>> _ = set_young_threshold(before[0])
    """
    before = gc.get_threshold()
    if threshold > 0:
        gc.set_threshold(threshold, *before[1:])
    return before


def tune_collector(*, freeze: bool, young_threshold: int) -> None:
    """What a worker does to the collector once start-up is done: :func:`freeze_heap` (if
    ``freeze``) and :func:`set_young_threshold`."""
    if freeze:
        freeze_heap()
    set_young_threshold(young_threshold)
    log.info("garbage collector thresholds: %s", gc.get_threshold())


class BusyYoungThreshold:
    """The young-collection threshold by load: ``busy`` while a backlog waits, back to what
    it was (Python's 700, or ``--gc-young-threshold``) once it is worked off.

    The trade-off of :func:`set_young_threshold`, taken per poll rather than per process. A
    worker with a backlog gets full batches, where a high threshold lets most of a batch's
    objects die before any collection walks them (ml-100k: collector time 5.6-7.1 -> 0.9 ms
    per 500-event batch, 3-4% of its time) and a pause costs little freshness, since the
    backlog dominates it. A worker that keeps up, or nearly, gets smaller batches, where
    freshness counts and Python's frequent small collections are the better trade (the
    worker decides which, ``Worker._adapt_to_load``). ``update`` is called once per poll; the
    threshold changes only when the load does.

    >>> before = gc.get_threshold()
    >>> busy = BusyYoungThreshold(50_000)
    >>> busy.update(True); gc.get_threshold()[0]
    50000
    >>> busy.update(False); gc.get_threshold() == before
    True
    """

    def __init__(self, busy: int) -> None:
        if busy <= 0:
            raise ValueError(f"busy threshold must be positive, not {busy}")
        self.busy = busy
        self._idle: int | None = None  # the threshold to return to; None while not busy

    @property
    def active(self) -> bool:
        """Whether the busy threshold is in force now."""
        return self._idle is not None

    def update(self, backlog: bool) -> None:
        """Switch to the busy threshold when a ``backlog`` waits, back when not."""
        if backlog and self._idle is None:
            self._idle = set_young_threshold(self.busy)[0]
        elif not backlog and self._idle is not None:
            set_young_threshold(self._idle)
            self._idle = None
