"""Fixtures for the local runner's tests."""

from __future__ import annotations

import pytest
from local_helpers import require_prometheus


@pytest.fixture
def prometheus_binary() -> str:
    return require_prometheus()
