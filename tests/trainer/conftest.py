"""Shared settings for the trainer's tests: a small digits trial that reaches a loose FID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

# A DCGAN on the embedded digits at 16x16 that crosses FID 500 after ~150-200 steps (a few
# seconds on one CPU thread).
QUICK = ["--dataset", "digits", "--batch-size", "16", "--lr-g", "5e-4", "--lr-d", "5e-4",
         "--fid-threshold", "500", "--eval-every", "20", "--eval-samples", "250",
         "--max-steps", "400", "--threads", "1", "--gns-every", "5"]


@pytest.fixture(scope="session")
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fid-stats")


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "critbatch_trainer", *args]


def run_trainer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(trainer_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env)
