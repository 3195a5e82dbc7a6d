"""Helpers of the local runner's tests: the fake trainer, its sweep, and waiting on processes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sweeps import MINIMAL, sweep_manifest

HERE = Path(__file__).resolve().parent
FAKE_TRAINER = [sys.executable, str(HERE / "fake_trainer.py")]


# The local runner's tests run the fake trainer (fake_trainer.py): a threshold its model
# reaches within maxSteps at these batch sizes, one seed, the CPU, and no pruning by the SFO
# bound, so that every trial runs to its own end.
LOCAL_BASE: dict = sweep_manifest(
    "fake", base=MINIMAL,
    trainer={"image": "critbatch-trainer:test", "dataset": {"name": "digits"}, "device": "cpu",
             "gpus": 0},
    batchSizes=[16, 32, 64],
    target={"fidThreshold": 10, "evalEvery": 50, "evalSamples": 100, "maxSteps": 3000},
    parallelism=2, pruning={"sfoBound": False})


def local_manifest(name: str = "fake", *, trainer: Mapping[str, Any] | None = None,
                   **spec: Any) -> dict:
    """`sweep_manifest` on LOCAL_BASE, whose target and grid suit the fake trainer's model."""
    return sweep_manifest(name, base=LOCAL_BASE, trainer=trainer, **spec)


def run_events(out: Path) -> list[dict]:
    """The runner's event log (events.jsonl in the run directory `out`), one dict an event."""
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def one_line_error(capsys, starts: str) -> str:
    """The command's stderr: one line, `critbatch: error: <starts>...`, no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"critbatch: error: {starts}"), err
    assert "Traceback" not in err
    return err


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
