"""The Kafka benchmarks run end to end against the real broker (small sizes, no timings
asserted): throughput's bare loop and worker both consume every event, the latency bench
matches every offered event to an answer, and the soak samples every worker it starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def run_bench(script: str, *args: str, timeout: float = 480) -> subprocess.CompletedProcess[str]:
    """Run a bench script to completion. Its stderr (the progress log) goes to a file, so that a
    run that stalls fails here, inside pytest's own 600 s limit, with the log's tail naming the
    step it stalled in, rather than being killed by pytest with nothing to show."""
    with tempfile.TemporaryFile("w+") as err:
        try:
            done = subprocess.run(
                [sys.executable, str(ROOT / "bench" / script), *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            err.seek(0)
            tail = err.read()[-3000:]
            pytest.fail(f"{script} still running after {timeout:.0f} s; its log:\n{tail}")
        err.seek(0)
        log = err.read()
    assert done.returncode == 0, log[-3000:]
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, log)


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
        "--timeout",  # per loop: a stalled loop is named, well inside run_bench's limit
        "180",
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
        "--logs",
        str(tmp_path / "logs"),
        "--json",
        str(out),
    )
    [row] = json.loads(out.read_text())
    assert row["offered_rate"] == 100 and row["events"] == 300
    assert row["bare_lost"] == 0 and row["worker_lost"] == 0
    for key in ("bare_p50_ms", "bare_p99_ms", "worker_p50_ms", "worker_p99_ms"):
        assert math.isfinite(row[key]) and row[key] >= 0
    # What the worker did in the measured window, from its /metrics before and after.
    stages = row["worker_ms_per_batch"]
    assert stages["events per batch"] > 0 and stages["learn"] > 0 and stages["gc0 pauses"] > 0
    # Each loop's log kept, in start order; the worker froze its start-up heap.
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["01-bare.log", "02-worker.log"]
    worker_log = (tmp_path / "logs" / "02-worker.log").read_text()
    assert "start-up objects frozen" in worker_log
    assert "garbage collector thresholds: (700, " in worker_log  # Python's, the default


def test_soak_samples_every_worker_and_plots(bootstrap: str, tmp_path: Path) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    done = run_bench(
        "soak.py",
        "--bootstrap",
        bootstrap,
        "--minutes",
        "1",
        "--sample-s",
        "10",
        "--workers",
        "2",
        "--users",
        "3000",
        "--items",
        "200",
        "--rate",
        "100",
        "--worker-env",
        "FRESHREC_BATCH_SIZE=100",
        "--json",
        str(out),
        "--plot",
        str(png),
        "--logs",
        str(tmp_path / "logs"),
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert result["error"] == ""
    assert all(w["clean_stop"] for w in result["workers"].values()), result["workers"]
    for worker in ("w0", "w1"):
        samples = [r for r in result["samples"] if r["worker"] == worker]
        assert [r["minute"] for r in samples] == sorted(r["minute"] for r in samples)
        assert len(samples) == 7  # at 0, 10, ..., 60 s
        for r in samples:
            assert r["rss_mib"] > 0 and r["open_files"] > 0 and r["threads"] > 0
            assert r["lag"] is not None and r["users_in_state"] is not None
        assert samples[-1]["processed"] > 0 and samples[-1]["users_in_state"] > 0
        assert samples[-1]["partitions"], "the broker names the worker's partitions"
    assert result["producer"]["sent"] > 0 and result["producer"]["failed"] == 0
    # The extra setting reached the workers themselves, not only the soak's record of them.
    assert result["settings"]["worker_env"]["FRESHREC_BATCH_SIZE"] == "100"
    assert all("batch_size=100" in s for s in result["settings"]["worker_logged_settings"].values())
    series = {(v["series"], v["worker"]) for v in result["verdicts"]}
    assert {(s, w) for s in ("rss_mib", "open_files", "threads", "lag") for w in ("w0", "w1")} <= (
        series
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| minute | worker | RSS MiB |" in done.stdout
