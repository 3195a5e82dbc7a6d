"""Fixtures for the operator's end-to-end tests; the machinery lives in harness.py."""

from __future__ import annotations

from typing import Any

import pytest
from harness import Emulator, setup_kmock


@pytest.fixture()
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """kmock's options with our emulator class (it understands generateName)."""
    return {**kmock_options, "cls": Emulator}


@pytest.fixture()
def k(kmock: Any) -> Any:
    """kmock serving the built-in kinds and the CriticalBatchSweep resource."""
    setup_kmock(kmock)
    return kmock
