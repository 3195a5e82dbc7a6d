"""The estimator benchmark (the posterior scored on simulated sweeps) runs at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

from bench.estimator import FINE_GRID, scenarios


def test_estimator_benchmark_scores_every_scenario_and_times_infer(tmp_path: Path,
                                                                   run_bench) -> None:
    out = tmp_path / "estimator.json"
    proc = run_bench("estimator", "--sweeps", "1", "--seed", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [(r["scenario"], r["seeds"]) for r in data["rows"]] == [
        (s.name, s.seeds) for s in scenarios()]
    assert any(s.grid == FINE_GRID for s in scenarios())
    for row in data["rows"]:
        assert row["sweeps"] == 1
        for key in ("old_accuracy", "new_accuracy", "set_coverage", "interval_coverage"):
            assert 0.0 <= row[key] <= 1.0
        assert 1 <= row["set_size"] <= 21
    assert len(data["infer_ms"]) == 3 and all(ms > 0 for ms in data["infer_ms"].values())
    assert proc.stdout.count("\n") == len(data["rows"]) + 3 + 3
