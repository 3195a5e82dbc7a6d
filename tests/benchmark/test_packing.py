"""The packing benchmark (k trials sharing a device) runs on the CPU at a tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_packing_benchmark_reports_a_ratio_per_batch_size_and_k(tmp_path: Path,
                                                                run_bench) -> None:
    out = tmp_path / "packing.json"
    proc = run_bench("packing", "--device", "cpu", "--batch-sizes", "2,4", "--trials", "2,3",
                     "--steps", "3", "--warmup", "1", "--rounds", "1", "--threads", "2",
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["hardware"]["device"] == "cpu"
    assert data["settings"] == {"device": "cpu", "network": "demo", "steps": 3, "warmup": 1,
                                "rounds": 1, "threads": 2, "trainer_flags": ""}
    rows = data["rows"]
    assert [(r["batch_size"], r["trials"]) for r in rows] == [
        (b, k) for b in (2, 4) for k in (1, 2, 3)]  # k = 1, the baseline, is always timed
    for row in rows:
        assert "error" not in row
        assert row["threads_per_trial"] == max(1, 2 // row["trials"])
        assert len(row["per_trial_steps_per_s"]) == row["trials"]
        for key in ("aggregate_steps_per_s", "single_steps_per_s", "ratio", "wall_seconds"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        single = next(r for r in rows if r["batch_size"] == row["batch_size"]
                      and r["trials"] == 1)["aggregate_steps_per_s"]
        assert row["single_steps_per_s"] == single
        assert row["ratio"] == pytest.approx(row["aggregate_steps_per_s"] / single)
        # the slowest process bounds the wall time, so no process beats the aggregate's pace
        assert row["aggregate_steps_per_s"] <= sum(row["per_trial_steps_per_s"]) * (1 + 1e-9)
    lines = proc.stdout.strip().splitlines()
    assert lines[-7].split() == ["b", "k", "aggregate/s", "single/s", "ratio"]
    assert [line.split()[:2] for line in lines[-6:]] == [
        [str(b), str(k)] for b in (2, 4) for k in (1, 2, 3)]
