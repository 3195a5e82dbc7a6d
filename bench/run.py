"""Steps/s of the trainer's DCGAN 64x64 step against the paper-style baseline, and FID time.

One process, one run: for each batch size the variants are timed in interleaved rounds (the
best round counts), so clock and thermal drift hit them alike. "ours" is the trainer's own
`Trial.train_step`, not a copy. The FID part times one evaluation of the trainer's in-memory
path (`fid.generated_stats` + the cached reference) against writing PNG files and reading
them back. Inception-v3 has random weights: the timing does not depend on them.

    python -m bench.run                       # a GPU when one is present, else the CPU
    python -m bench.run --device cpu --sizes 2,4 --fid-samples 200 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import baseline
from critbatch_trainer.config import parse_args
from critbatch_trainer.data import TrainingData
from critbatch_trainer.extractors import Extractor
from critbatch_trainer.fid import FrechetReference, eval_chunk, generated_stats
from critbatch_trainer.inception import FidInceptionV3
from critbatch_trainer.loop import Trial

# Dense (no sparsity) tensor-core peaks of an H100/H200 SXM by the vendor's datasheet, in
# FLOP/s. cuDNN runs "fp32" convolutions in TF32 by default, so TF32 is the fp32 peak here.
PEAKS = {"tf32": 494.7e12, "bf16": 989.4e12}


def sync(device: torch.device) -> None:
    """Wait for the device's queue, so that a clock read after it means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable[[], None], device: torch.device, min_steps: int,
           budget: float) -> float:
    """Steps per second over at least min_steps steps and about `budget` seconds."""
    sync(device)
    t0 = time.perf_counter()
    n = 0
    while n < min_steps or time.perf_counter() - t0 < budget:
        step()
        n += 1
        if n % 8 == 0 or n >= min_steps:
            sync(device)  # bound the queue so the clock check means something
    sync(device)
    return n / (time.perf_counter() - t0)


def build_trial(b: int, device: torch.device, cache: str, extra: list[str]) -> Trial:
    """The trainer's Trial with the paper's DCGAN 64x64 on digits; `extra` flags override."""
    cfg = parse_args(["--dataset", "digits", "--image-size", "64", "--channels", "3",
                      "--width", "64", "--z-dim", "100", "--lr-g", "1e-4", "--lr-d", "3e-4",
                      "--batch-size", str(b), "--fid-threshold", "1", "--max-steps", "1",
                      "--eval-samples", "2", "--real-samples", "64", "--gns-every", "0",
                      "--device", device.type, "--stats-cache", cache,
                      "--termination-log", "", *extra])
    return Trial.create(cfg, log=lambda _m: None)


def stepper(trial: Trial) -> Callable[[], None]:
    """One call = one `Trial.train_step`, the code path a trial runs, on seed 0's batches."""
    trial.gan.G.train()
    trial.gan.D.train()
    batches = trial.data.batches(0, trial.cfg.batch_size, 0, trial.device)
    return lambda: trial.train_step(batches)


def variants(device: torch.device) -> dict[str, list[str]]:
    """Trainer flags of each timed variant of "ours"."""
    if device.type == "cuda":
        return {"ours": [], "ours_graph": ["--cuda-graph"],
                "ours_graph_bf16": ["--cuda-graph", "--bf16"]}
    return {"ours": []}


def bench_training(sizes: list[int], device: torch.device, *, rounds: int, budget: float,
                   min_steps: int, warmup: int, workers: int, cache: str,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    images = TrainingData("digits", image_size=64, channels=3).embedded.images  # as trained
    rows = []
    for b in sizes:
        n = max(2 * b, 1024)
        base_images = images.repeat(math.ceil(n / len(images)), 1, 1, 1)[:n].contiguous()
        runners: dict[str, Callable[[], None]] = {}
        bl = baseline.BaselineTrainer(base_images, b, device, workers)
        runners["baseline"] = bl.step
        trials = {}
        for name, flags in variants(device).items():
            t = build_trial(b, device, cache, flags)
            trials[name] = t
            runners[name] = stepper(t)
        errors: dict[str, str] = {}
        for name, run in list(runners.items()):
            try:
                for _ in range(warmup):
                    run()
                sync(device)
            except Exception as e:  # one broken variant must not cost the others' figures
                errors[name] = f"{type(e).__name__}: {e}"
                log(f"b={b}: {name} failed: {errors[name]}")
                del runners[name]
        if "baseline" not in runners:
            raise RuntimeError(f"the baseline failed at b={b}: {errors['baseline']}")
        best = {name: 0.0 for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                best[name] = max(best[name], _timed(run, device, min_steps, budget))
        row: dict[str, Any] = {"batch_size": b, "steps_per_s": best}
        if errors:
            row["errors"] = errors
        row["ratio"] = {k: v / best["baseline"] for k, v in best.items() if k != "baseline"}
        log(f"b={b:5d} " + " ".join(f"{k}={v:9.2f}/s" for k, v in best.items())
            + "  ratio " + " ".join(f"{k}={v:.2f}x" for k, v in row["ratio"].items()))
        if b == sizes[-1] and "ours" in runners:
            row["flops_per_step"] = _step_flops(trials["ours"])
        rows.append(row)
        del bl, runners, trials, base_images
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _step_flops(trial: Trial) -> int:
    """FLOPs of one training step (forward and backward of both networks) by op counting."""
    from torch.utils.flop_counter import FlopCounterMode

    batches = trial.data.batches(1, trial.cfg.batch_size, 0, trial.device)
    counter = FlopCounterMode(display=False)
    with counter:
        trial.train_step(batches)
    return int(counter.get_total_flops())


def bench_fid(samples: int, baseline_samples: int, device: torch.device,
              log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(0)
    G = baseline.generator().to(device)  # the same network as the trainer's DCGAN 64x64
    net = FidInceptionV3().eval().to(device)
    ours_ex = Extractor(name="inception", network=net, input_size=299, channels=3,
                        fingerprint="random").to(device)
    # The trainer computes the real statistics once per trial (cached on disk): the
    # reference and its matrix root exist before any evaluation, so they are set up here.
    z_ref = torch.randn(max(min(samples, eval_chunk(device)), 2), baseline.NZ)
    mu, sigma = generated_stats(_Flat(G), ours_ex, z_ref, None, device)
    reference = FrechetReference(mu, sigma)
    z = torch.randn(samples, baseline.NZ)
    sync(device)
    t0 = time.perf_counter()
    mu, sigma = generated_stats(_Flat(G), ours_ex, z, None, device)
    value = reference.distance(mu, sigma)
    ours = time.perf_counter() - t0
    log(f"FID ours: {samples} samples in {ours:.2f} s (fid {value:.3g})")
    base_net = FidInceptionV3().eval().to(device)
    base_net.load_state_dict(net.state_dict())
    with tempfile.TemporaryDirectory() as d:
        phases = baseline.fid_with_files(G, base_net, z[:baseline_samples], device, Path(d),
                                         (reference.mu, reference.sigma))
    per_sample = phases["write"] + phases["read_extract"] + phases["stats"]
    estimate = per_sample * samples / baseline_samples + phases["distance"]
    log(f"FID baseline: {baseline_samples} samples: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in phases.items() if k != "fid")
        + f"; scaled to {samples}: {estimate:.1f} s")
    return {"samples": samples, "ours_seconds": ours, "ours_fid": value,
            "baseline_samples": baseline_samples,
            "baseline_phases": phases, "baseline_seconds_scaled": estimate,
            "baseline_scaled": baseline_samples != samples, "ratio": estimate / ours}


class _Flat(torch.nn.Module):
    """The baseline generator with the trainer's (z, y) calling convention."""

    def __init__(self, g: torch.nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.g(z.view(z.shape[0], -1, 1, 1))


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device.type, "torch": torch.__version__,
                            "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(),
                            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sizes", help="comma-separated batch sizes (GPU: 2..2048, CPU: 2..32)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per timed block")
    p.add_argument("--min-steps", type=int, default=3, help="steps per timed block, at least")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps per variant")
    p.add_argument("--workers", type=int, default=None,
                   help="baseline DataLoader processes (default: GPU 2, CPU 0)")
    p.add_argument("--fid-samples", type=int, default=None,
                   help="samples of the FID evaluation (default: GPU 50000, CPU 500)")
    p.add_argument("--fid-baseline-samples", type=int, default=None,
                   help="samples the file-based FID really writes; its time is scaled "
                        "linearly to --fid-samples (default: the same number)")
    p.add_argument("--no-fid", action="store_true")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if a.device == "auto" else a.device))
    gpu = device.type == "cuda"
    sizes = ([int(s) for s in a.sizes.split(",")] if a.sizes
             else [2 ** k for k in range(1, 12 if gpu else 6)])
    workers = a.workers if a.workers is not None else (2 if gpu else 0)
    fid_n = a.fid_samples or (50000 if gpu else 500)

    def log(msg: str) -> None:
        print(msg, flush=True)

    out: dict[str, Any] = {"command": "python -m bench.run " + " ".join(
        sys.argv[1:] if argv is None else argv), "hardware": hardware(device)}
    log(json.dumps(out["hardware"]))
    with tempfile.TemporaryDirectory() as cache:
        rows = bench_training(sizes, device, rounds=a.rounds, budget=a.budget,
                              min_steps=a.min_steps, warmup=a.warmup, workers=workers,
                              cache=cache, log=log)
    out["training"] = rows
    top = rows[-1]
    flops = top.get("flops_per_step", 0)
    mfu = {}
    for name, sps in top["steps_per_s"].items():
        if name == "baseline" or not flops:
            continue
        achieved = flops * sps
        entry = {"tflops": achieved / 1e12}
        if gpu:
            peak = PEAKS["bf16" if name.endswith("bf16") else "tf32"]
            entry["peak_tflops"] = peak / 1e12
            entry["mfu"] = achieved / peak
        mfu[name] = entry
    out["mfu"] = {"batch_size": top["batch_size"], "flops_per_step": flops, **mfu}
    log(f"b={top['batch_size']}: {flops / 1e9:.1f} GFLOP per step; " + "; ".join(
        f"{k} {v['tflops']:.1f} TFLOP/s" + (f" = {100 * v['mfu']:.1f}% of "
                                            f"{v['peak_tflops']:.0f}" if "mfu" in v else "")
        for k, v in mfu.items()))
    if not a.no_fid:
        out["fid"] = bench_fid(fid_n, a.fid_baseline_samples or fid_n, device, log)
        log(f"FID ratio (baseline / ours): {out['fid']['ratio']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
