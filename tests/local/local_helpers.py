"""Helpers shared by the local runner's tests (a module name unique across the test tree)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_TRAINER = [sys.executable, str(HERE / "fake_trainer.py")]


def sweep_manifest(name: str = "fake", **spec: object) -> dict:
    """A small CriticalBatchSweep manifest; keyword arguments replace top-level spec fields."""
    base: dict = {
        "trainer": {"image": "critbatch-trainer:test", "dataset": {"name": "digits"},
                    "device": "cpu", "gpus": 0},
        "batchSizes": [16, 32, 64],
        "target": {"fidThreshold": 10, "evalEvery": 50, "evalSamples": 100, "maxSteps": 3000},
        "parallelism": 2,
        "pruning": {"sfoBound": False},
    }
    base.update(spec)
    return {"apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
            "metadata": {"name": name}, "spec": base}


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_until(predicate, timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def require_prometheus() -> str:
    """The installed prometheus: missing is a failure in CI, a skip elsewhere."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/install-test-tools.sh installs it)")
        pytest.skip("prometheus is not installed")
    return path
