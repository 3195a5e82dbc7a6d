"""The benchmark runs on the CPU at tiny sizes, and its baseline FID protocol is a real FID."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def test_benchmark_runs_on_cpu_and_prints_ratios(tmp_path: Path, run_bench) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench("run", "--device", "cpu", "--sizes", "2,4", "--rounds", "1", "--budget", "0",
                     "--min-steps", "2", "--warmup", "1", "--no-fid", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ratio ours=" in proc.stdout
    data = json.loads(out.read_text())
    assert data["hardware"]["device"] == "cpu"
    assert [r["batch_size"] for r in data["training"]] == [2, 4]
    for row in data["training"]:
        assert set(row["steps_per_s"]) == {"baseline", "ours"}
        ratio = row["ratio"]["ours"]
        assert math.isfinite(ratio) and ratio > 0
        assert ratio == pytest.approx(row["steps_per_s"]["ours"] / row["steps_per_s"]["baseline"])
    # FLOPs of a DCGAN 64x64 step at b=4: forward and backward of G and D, counted by op.
    assert data["mfu"]["batch_size"] == 4 and data["mfu"]["flops_per_step"] > 1e9


def test_file_based_fid_matches_the_in_memory_fid(tmp_path: Path) -> None:
    """Writing PNGs and reading them back only quantises: the two protocols agree closely."""
    from bench import baseline
    from critbatch_trainer.data import TrainingData
    from critbatch_trainer.extractors import Extractor, SmallClassifier
    from critbatch_trainer.fid import FrechetReference, generated_stats

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    G = baseline.generator().eval()
    net = SmallClassifier(16, 3, 10, (8, 16), 32).eval()
    extractor = Extractor(name="small", network=net, input_size=16, channels=3,
                          fingerprint="test")
    real = TrainingData("digits", image_size=64, channels=3).embedded.images[:300]
    mu, sigma = generated_stats(lambda x, y: x, extractor, real, None, cpu)
    ref = FrechetReference(mu, sigma)
    z = torch.randn(150, baseline.NZ)
    mu2, sigma2 = generated_stats(lambda z, y: G(z.view(-1, baseline.NZ, 1, 1)), extractor, z,
                                  None, cpu)
    ours = ref.distance(mu2, sigma2)
    phases = baseline.fid_with_files(G, extractor, z, cpu, tmp_path, (mu, sigma))
    assert len(list(tmp_path.glob("*.png"))) == 150
    assert ours > 1e-3
    assert phases["fid"] == pytest.approx(ours, rel=0.02)
    assert all(phases[k] >= 0 for k in ("write", "read_extract", "stats", "distance"))
