"""The sweep-overhead benchmark runs a sweep cold and warm and accounts for its time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from critbatch_trainer.timings import Timings, parse_line

pytest.importorskip("torch")

SWEEP = {
    "apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
    "metadata": {"name": "overhead"},
    "spec": {"trainer": {"model": "dcgan", "imageSize": 16, "channels": 1,
                         "dataset": {"name": "digits"}, "device": "cpu", "gpus": 0},
             "batchSizes": [8], "seeds": 1, "parallelism": 1,
             "target": {"threshold": 1000, "evalEvery": 20, "evalSamples": 100,
                        "maxSteps": 20},
             "metrics": {"source": "direct"}},
}


def test_a_timings_line_reads_back_and_anything_else_does_not() -> None:
    t = Timings(start=3.0, setup=0.5, train=2.25)
    assert parse_line(f"critbatch-trainer: {t.line()}") == {
        "start": 3.0, "setup": 0.5, "train": 2.25, "evaluate": 0.0, "noise_scale": 0.0,
        "checkpoint": 0.0}
    assert parse_line("step 20 fid 300.1") is None
    assert parse_line("timings: start=1 setup=x") is None
    assert parse_line("timings: start=1") is None


def test_cold_and_warm_runs_of_one_sweep_are_accounted(tmp_path: Path, run_bench) -> None:
    sweep, out = tmp_path / "sweep.yaml", tmp_path / "overhead.json"
    sweep.write_text(yaml.safe_dump(SWEEP))
    proc = run_bench("overhead", "--sweep", str(sweep), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    cold, warm = data["modes"]
    assert (cold["mode"], warm["mode"]) == ("cold", "warm")
    for row in (cold, warm):
        assert row["processes"] == 1 and "trials 1/1" in row["result"]
        assert row["seconds"]["train"] > 0 and 0 < row["training_share"] < 1
    # A fresh interpreter imports torch; a forked trial has it already.
    assert warm["seconds"]["start"] < cold["seconds"]["start"]
    assert data["wall_ratio_cold_over_warm"] > 0
