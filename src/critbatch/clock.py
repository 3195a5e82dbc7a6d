"""Timestamps as the project writes them: UTC to the second, RFC 3339 (Kubernetes' form)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now as `YYYY-MM-DDTHH:MM:SSZ`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
