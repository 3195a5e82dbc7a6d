"""Fixtures of the trainer's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")


@pytest.fixture(scope="session")
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One FID real-statistics cache for the session (computed once, as in production)."""
    return tmp_path_factory.mktemp("fid-stats")
