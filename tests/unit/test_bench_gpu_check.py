"""bench/gpu_check.py, the learner and encoder check that bench/gpu.sh runs on a GPU machine:
its whole code path runs here with the CPU in the accelerator's place, so that a change to
the learner or the encoder cannot break it unseen between two sessions that have a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from consumer.datasets import fetch_ml100k
from learner.encoder import default_model_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/gpu_check.py"),
            "--model",
            str(default_model_dir()),
            "--data",
            str(fetch_ml100k(progress=False)),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=280,
    )


def test_the_gpu_check_passes_end_to_end_with_the_cpu_standing_in() -> None:
    done = run_check(
        "--device", "cpu", "--items", "150", "--events", "600", "--users", "40",
        "--long-texts", "8",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout
    assert "## freshrec GPU check on CPU (a smoke run: no accelerator)" in table
    for row in (
        "| encoder cosine CPU vs CPU fp32 (ml-100k titles) |",
        "| learner replay 600 events, batch 500, cpu |",
        "| top-10 overlap CPU vs CPU after replay | 1.000 | ok |",
        "| HR@10 difference CPU vs CPU | 0.0000 | ok |",
        "| exact scores + top-10, 1024 users x 10k items, float32 |",
    ):
        assert row in table, table
    assert table.rstrip().endswith("RESULT: PASS")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_cuda_device_the_gpu_check_refuses_rather_than_pass() -> None:
    done = run_check("--events", "10")
    assert done.returncode == 1
    assert "no CUDA device: nothing to check" in done.stderr
