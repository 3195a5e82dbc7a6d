"""Fixtures of the benchmark's tests: the bench package run as docs/benchmarks.md runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BenchRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_bench() -> BenchRun:
    """`python -m bench.<module> ARGS` from the repository root, its output captured."""
    def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    return run
