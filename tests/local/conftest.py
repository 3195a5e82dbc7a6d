"""Fixtures for the local runner's tests."""

from __future__ import annotations

import pytest
from local_helpers import require_prometheus


@pytest.fixture
def prometheus_binary() -> str:
    return require_prometheus()


@pytest.fixture
def fast_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake trainer without a pause between steps, for tests that need its results, not
    its pace (a test that needs trials to run a while sets FAKE_STEP_SECONDS itself)."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
