"""The trainer as the tests run it: a quick training on the digits, and the trainer as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from critbatch_trainer.config import parse_args
from critbatch_trainer.loop import Trial

# A DCGAN on the embedded digits at 16x16 that crosses FID 500 after ~150-200 steps (a few
# seconds on one CPU thread).
QUICK = ["--dataset", "digits", "--batch-size", "16", "--lr-g", "5e-4", "--lr-d", "5e-4",
         "--fid-threshold", "500", "--eval-every", "20", "--eval-samples", "250",
         "--max-steps", "400", "--threads", "1", "--gns-every", "5"]


def small_biggan(stats_cache: Path, *extra: str) -> Trial:
    """A BigGAN at 32x32, width 4, with attention at 16, batch 6: every layer kind, in seconds."""
    cfg = parse_args(["--model", "biggan", "--image-size", "32", "--width", "4",
                      "--attention-res", "16", "--batch-size", "6", "--ema-start", "0",
                      "--fid-threshold", "0.001", "--max-steps", "3", "--eval-samples", "64",
                      "--gns-every", "0", "--threads", "1", "--stats-cache", str(stats_cache),
                      "--termination-log", "", *extra])
    return Trial.create(cfg, log=lambda _msg: None)


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "critbatch_trainer", *args]


def run_trainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(trainer_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env)
