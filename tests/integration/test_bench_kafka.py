"""The Kafka benchmarks run end to end against the real broker (small sizes, no timings
asserted): throughput's bare loop and worker both consume every event, and the latency bench
matches every offered event to an answer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def run_bench(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_throughput_bench_runs_both_loops_over_every_event(bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    done = run_bench(
        "throughput.py",
        "--bootstrap",
        bootstrap,
        "--catalogs",
        "1k",
        "--events",
        "3000",
        "--users",
        "300",
        "--partitions",
        "2",
        "--json",
        str(out),
    )
    [row] = json.loads(out.read_text())
    assert row["catalog_items"] == 1000 and row["events"] == 3000
    assert row["bare_events_per_s"] > 0 and row["worker_events_per_s"] > 0
    assert row["ratio"] == pytest.approx(
        row["worker_events_per_s"] / row["bare_events_per_s"], rel=0.01
    )
    assert "| 1,000 (1k) |" in done.stdout


def test_latency_bench_answers_every_offered_event(bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    run_bench(
        "latency.py",
        "--bootstrap",
        bootstrap,
        "--rates",
        "100",
        "--seconds",
        "3",
        "--partitions",
        "2",
        "--drain",
        "60",
        "--json",
        str(out),
    )
    [row] = json.loads(out.read_text())
    assert row["offered_rate"] == 100 and row["events"] == 300
    assert row["bare_lost"] == 0 and row["worker_lost"] == 0
    for key in ("bare_p50_ms", "bare_p99_ms", "worker_p50_ms", "worker_p99_ms"):
        assert math.isfinite(row[key]) and row[key] >= 0
