"""Fixtures for the local runner's tests."""

from __future__ import annotations

import pytest
from local_helpers import require_prometheus


@pytest.fixture
def prometheus_binary() -> str:
    return require_prometheus()


@pytest.fixture
def fast_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake trainer at 1 ms a step, for tests that need its results, not its pace."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.001")
