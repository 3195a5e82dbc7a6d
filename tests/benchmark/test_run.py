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


# Tiny networks: the paths (penalty's double backward; spectral norm, conditional batch norm,
# attention, EMA) run, not the paper's sizes. In-process, to spare an interpreter start; one
# batch size for BigGAN, whose orthogonal init is most of its time here.
TINY = {"wgan-gp": (["--image-size", "16", "--width", "8"], [2, 4]),
        "biggan": (["--image-size", "32", "--width", "8"], [4])}


@pytest.mark.parametrize("model", sorted(TINY))
def test_benchmark_of_each_model_runs_on_cpu(model: str, tmp_path: Path, capsys) -> None:
    from bench import run

    flags, sizes = TINY[model]
    out = tmp_path / "bench.json"
    assert run.main(["--model", model, *flags, "--device", "cpu", "--sizes",
                     ",".join(map(str, sizes)), "--rounds", "1", "--budget", "0",
                     "--min-steps", "1", "--warmup", "0", "--no-fid", "--json", str(out)]) == 0
    assert "ratio ours=" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["model"]["model"] == model
    assert [r["batch_size"] for r in data["training"]] == sizes
    timed = {"baseline", "ours"} | ({"ours_fused"} if model == "biggan" else set())
    for row in data["training"]:
        assert set(row["steps_per_s"]) == timed and "errors" not in row
        assert all(math.isfinite(r) and r > 0 for r in row["ratio"].values())
    # Counted through WGAN-GP's autograd.grad too, where FlopCounterMode's hooks fail.
    assert data["mfu"]["batch_size"] == sizes[-1] and data["mfu"]["flops_per_step"] > 0


def test_a_failing_baseline_is_reported_and_the_run_goes_on(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """Out of memory at one batch size costs that size's baseline figure, not the run."""
    from bench import run, specs

    made = specs.Setup.baseline

    def baseline(self, images, labels, batch_size, device, workers):
        if batch_size == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return made(self, images, labels, batch_size, device, workers)

    monkeypatch.setattr(specs.Setup, "baseline", baseline)
    out = tmp_path / "bench.json"
    assert run.main(["--model", "wgan-gp", "--image-size", "8", "--width", "4", "--device",
                     "cpu", "--sizes", "2,4", "--rounds", "1", "--budget", "0", "--min-steps",
                     "1", "--warmup", "0", "--no-fid", "--json", str(out)]) == 0
    first, second = json.loads(out.read_text())["training"]
    assert "out of memory" in first["errors"]["baseline"]
    assert set(first["steps_per_s"]) == {"ours"} and "ratio" not in first
    assert set(second["steps_per_s"]) == {"baseline", "ours"} and "errors" not in second
    assert "baseline failed" in capsys.readouterr().out


def test_flops_are_counted_through_a_double_backward() -> None:
    """A linear map y = x W^T (n x k, m x k): forward, grad wrt x, and that grad's backward
    to W are one n*m*k product each, 2 FLOPs per multiply-add."""
    from bench.flops import count_flops

    n, k, m = 8, 64, 32
    lin = torch.nn.Linear(k, m, bias=False)
    x = torch.randn(n, k, requires_grad=True)

    def step() -> None:
        (g,) = torch.autograd.grad(lin(x).sum(), x, create_graph=True)
        g.pow(2).sum().backward()

    assert count_flops(step) == 3 * 2 * n * m * k


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
