"""The memory benchmark (whole batches against micro-batches) runs on the CPU at a tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_memory_benchmark_reports_a_peak_per_batch_and_micro_batch(tmp_path: Path,
                                                                   run_bench) -> None:
    out = tmp_path / "memory.json"
    proc = run_bench("memory", "--model", "wgan-gp", "--sizes", "2,4", "--micro-batches",
                     "0,2", "--image-size", "16", "--width", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert (data["model"], data["device"], data["hardware"]["device"]) == ("wgan-gp", "cpu", "cpu")
    # b = 2 with micro-batches of 2 is the whole batch: measured once
    assert [(r["batch_size"], r["micro_batch"]) for r in data["rows"]] == [(2, 0), (4, 0), (4, 2)]
    for row in data["rows"]:
        assert "error" not in row
        assert row["peak_mib"] >= row["built_mib"] > 0 and math.isfinite(row["step_s"])
    assert len(proc.stdout.strip().splitlines()) == 3


def test_a_setting_that_cannot_run_is_reported_and_the_others_go_on(tmp_path: Path,
                                                                   run_bench) -> None:
    out = tmp_path / "memory.json"
    proc = run_bench("memory", "--model", "dcgan", "--sizes", "4", "--micro-batches", "0,2",
                     "--image-size", "16", "--width", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    whole, micro = json.loads(out.read_text())["rows"]
    assert "error" not in whole and "micro-batch: not with dcgan" in micro["error"]


def test_recomputed_activations_and_fused_attention_are_measured_beside_the_plain_step(
        tmp_path: Path, run_bench) -> None:
    out = tmp_path / "memory.json"
    proc = run_bench("memory", "--model", "biggan", "--sizes", "4", "--micro-batches", "0",
                     "--recompute", "0,1", "--fused-attention", "0,1", "--image-size", "32",
                     "--width", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["recompute"], r["fused_attention"]) for r in rows] == [
        (False, False), (False, True), (True, False), (True, True)]
    assert all("error" not in r for r in rows)
