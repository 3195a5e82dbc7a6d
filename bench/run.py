"""Steps/s of the trainer's training step against a paper-style baseline, and FID time.

One process, one run: for each batch size the variants are timed in interleaved rounds (the
best round counts), so clock and thermal drift hit them alike. "ours" is the trainer's own
`Trial.train_step`, not a copy; `--model` picks DCGAN (default), WGAN-GP or BigGAN and with
it the baseline (bench.specs). The FID part, the same whatever the model, times one
evaluation of the trainer's in-memory path (`fid.generated_stats` + the cached reference)
against writing PNG files and reading them back. Inception-v3 has random weights: the timing
does not depend on them.

    python -m bench.run                       # a GPU when one is present, else the CPU
    python -m bench.run --device cpu --sizes 2,4 --fid-samples 200 --json out.json
    python -m bench.run --model wgan-gp --device cpu --sizes 2,4 --no-fid
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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

from bench import baseline, specs
from bench.flops import count_flops, mfu_summary
from bench.specs import Setup
from critbatch_trainer.config import parse_args
from critbatch_trainer.data import TrainingData
from critbatch_trainer.extractors import Extractor
from critbatch_trainer.fid import FrechetReference, eval_chunk, generated_stats
from critbatch_trainer.inception import FidInceptionV3
from critbatch_trainer.loop import Trial


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


def variants(device: torch.device, model: str = "dcgan") -> dict[str, list[str]]:
    """Trainer flags of each timed variant of "ours": BigGAN's also with fused attention; on a
    GPU also with a CUDA graph and bf16 (DCGAN's eager bf16 step was measured before:
    docs/benchmarks.md)."""
    fused = {"ours_fused": ["--fused-attention"]} if model == "biggan" else {}
    if device.type != "cuda":
        return {"ours": [], **fused}
    eager_bf16 = {} if model == "dcgan" else {"ours_bf16": ["--bf16"]}
    fastest = ({"ours_graph_bf16_fused": ["--cuda-graph", "--bf16", "--fused-attention"]}
               if fused else {})
    return {"ours": [], **eager_bf16, **fused, "ours_graph": ["--cuda-graph"],
            "ours_graph_bf16": ["--cuda-graph", "--bf16"], **fastest}


def bench_training(sizes: list[int], device: torch.device, *, rounds: int, budget: float,
                   min_steps: int, warmup: int, workers: int, cache: str,
                   log: Callable[[str], None], spec: Setup | None = None) -> list[dict[str, Any]]:
    """One row per batch size: best steps/s of the baseline and each variant of "ours", their
    ratios, and the FLOPs of one step of "ours". A variant that fails at a size (out of
    memory, say) is reported in the row's `errors` and the run goes on."""
    spec = spec or specs.setup("dcgan", device.type == "cuda")
    data = TrainingData("digits", image_size=spec.image_size, channels=3).embedded  # as trained
    rows = []
    for b in sizes:
        n = max(2 * b, 1024)
        reps = math.ceil(n / len(data.images))
        base_images = data.images.repeat(reps, 1, 1, 1)[:n].contiguous()
        base_labels = data.labels.repeat(reps)[:n].contiguous()
        makers: dict[str, Callable[[], Callable[[], None]]] = {
            "baseline": functools.partial(spec.baseline, base_images, base_labels, b, device,
                                          workers)}
        trials: dict[str, Trial] = {}
        for name, flags in variants(device, spec.model).items():
            makers[name] = functools.partial(_ours, trials, name, b, device, cache,
                                             [*spec.trainer_flags(), *flags])
        runners: dict[str, Callable[[], None]] = {}
        errors: dict[str, str] = {}
        for name, make in makers.items():
            try:
                runners[name] = make()
                for _ in range(warmup):
                    runners[name]()
                sync(device)
            except Exception as e:  # one broken variant must not cost the others' figures
                _failed(name, e, b, errors, runners, trials, log)
            if name not in runners:
                _free(device)  # after the except block, which kept the failed step's frames
        best = {name: 0.0 for name in runners}
        for _ in range(rounds):
            for name, run in list(runners.items()):
                try:
                    best[name] = max(best[name], _timed(run, device, min_steps, budget))
                except Exception as e:
                    _failed(name, e, b, errors, runners, trials, log)
                    del best[name]
                if name not in runners:
                    _free(device)
        row: dict[str, Any] = {"batch_size": b, "steps_per_s": best}
        if errors:
            row["errors"] = errors
        if "baseline" in best:
            row["ratio"] = {k: v / best["baseline"] for k, v in best.items() if k != "baseline"}
        log(f"b={b:5d} " + " ".join(f"{k}={v:9.2f}/s" for k, v in best.items())
            + ("  ratio " + " ".join(f"{k}={v:.2f}x" for k, v in row["ratio"].items())
               if "ratio" in row else ""))
        # On a GPU at every size: the largest may not fit, and MFU is given at the largest
        # that did.
        if "ours" in runners and (b == sizes[-1] or device.type == "cuda"):
            try:
                row["flops_per_step"] = _step_flops(trials["ours"])
                log(f"b={b}: {row['flops_per_step'] / 1e9:.1f} GFLOP per step of ours")
            except Exception as e:
                log(f"b={b}: FLOP count failed: {type(e).__name__}: {e}")
        rows.append(row)
        del makers, runners, trials, base_images, base_labels
        _free(device)
    return rows


def _ours(trials: dict[str, Trial], name: str, b: int, device: torch.device, cache: str,
          flags: list[str]) -> Callable[[], None]:
    trials[name] = build_trial(b, device, cache, flags)
    return stepper(trials[name])


def _failed(name: str, e: Exception, b: int, errors: dict[str, str],
            runners: dict[str, Callable[[], None]], trials: dict[str, Trial],
            log: Callable[[str], None]) -> None:
    """Record a variant's failure and drop what it holds, so the others can use the memory."""
    errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    log(f"b={b}: {name} failed: {errors[name]}")
    runners.pop(name, None)
    trials.pop(name, None)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _step_flops(trial: Trial) -> int:
    """FLOPs of one training step (forward and backward of both networks, the penalty's double
    backward included) by op counting."""
    batches = trial.data.batches(1, trial.cfg.batch_size, 0, trial.device)
    return count_flops(lambda: trial.train_step(batches))


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


def _rate(entry: dict[str, float]) -> str:
    tflops = entry["tflops"]
    text = f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{1e3 * tflops:.2f} GFLOP/s"
    if "mfu" in entry:
        text += f" = {100 * entry['mfu']:.1f}% of {entry['peak_tflops']:.0f}"
    return text


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
    p.add_argument("--model", default="dcgan", choices=specs.MODELS,
                   help="the GAN whose step is timed (default dcgan)")
    p.add_argument("--image-size", type=int, default=None,
                   help="wgan-gp, biggan: resolution (default: GPU 64 / 128, CPU 64 / 32)")
    p.add_argument("--width", type=int, default=None,
                   help="wgan-gp, biggan: network width (default: GPU 64 / 96, CPU 64 / 16)")
    p.add_argument("--sizes", help="comma-separated batch sizes (default: GPU 2..2048; CPU "
                                   "2..32, biggan 2..8)")
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
    if a.model == "dcgan" and (a.image_size or a.width):
        p.error("--image-size/--width: the DCGAN baseline is the paper's 64x64 network")
    spec = specs.setup(a.model, gpu, image_size=a.image_size, width=a.width)
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else list(spec.sizes)
    workers = a.workers if a.workers is not None else (2 if gpu else 0)
    fid_n = a.fid_samples or (50000 if gpu else 500)

    def log(msg: str) -> None:
        print(msg, flush=True)

    out: dict[str, Any] = {"command": "python -m bench.run " + " ".join(
        sys.argv[1:] if argv is None else argv), "hardware": hardware(device),
        "model": {"model": spec.model, "image_size": spec.image_size, "width": spec.width,
                  "z_dim": spec.z_dim, "attention_res": spec.attention_res}}
    log(json.dumps(out["hardware"]))
    with tempfile.TemporaryDirectory() as cache:
        rows = bench_training(sizes, device, rounds=a.rounds, budget=a.budget,
                              min_steps=a.min_steps, warmup=a.warmup, workers=workers,
                              cache=cache, log=log, spec=spec)
    out["training"] = rows
    out["mfu"] = mfu = mfu_summary(rows, gpu)
    log(f"b={mfu['batch_size']}: {mfu['flops_per_step'] / 1e9:.1f} GFLOP per step; "
        + "; ".join(f"{k} {_rate(v)}" for k, v in mfu.items() if isinstance(v, dict)))
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
