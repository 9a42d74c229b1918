"""bench/memory.py: runs with one command and reports what the issue's JSON contract names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_memory_bench_reports_bytes_per_user_beyond_the_embedding(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/memory.py"),
            "--users",
            "3000",
            "--churn-rounds",
            "1",
            "--items",
            "500",
            "--dim",
            "16",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["phase"] for r in rows] == ["filled", "churn 1"]
    for row in rows:
        assert {"users", "rss_bytes", "bytes_per_user"} <= row.keys()
        assert row["users"] == 3000 and row["rss_bytes"] > 0
        assert row["embedding_bytes_per_user"] == 16 * 4
    assert "| phase |" in done.stdout
