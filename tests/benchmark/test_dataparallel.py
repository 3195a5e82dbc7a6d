"""The data-parallel benchmark runs on the CPU at tiny sizes and reports W workers against one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("torch")


def test_the_data_parallel_benchmark_times_two_workers_against_one(tmp_path: Path) -> None:
    out = tmp_path / "dp.json"
    # Its own timeout: two trials start (one under the launcher), which takes a while on a
    # loaded two-core machine.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dataparallel", "--workers", "1,2", "--sizes", "4",
         "--steps", "2", "--warmup", "1", "--image-size", "16", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W=2" in proc.stdout
    [row] = json.loads(out.read_text())["rows"]
    assert row["batch_size"] == 4 and set(row["steps_per_s"]) == {"1", "2"}
    assert row["ratio"]["2"] == pytest.approx(row["steps_per_s"]["2"] / row["steps_per_s"]["1"])


def test_worker_counts_must_divide_the_batch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.dataparallel", "--workers", "1,3",
                           "--sizes", "4"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "divide every batch size" in proc.stderr
