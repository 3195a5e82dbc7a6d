"""Atomic checkpoints: write a temp file, fsync, rename over the old one.

A kill -9 mid-write leaves at worst a stray temp file; `checkpoint.pt` is always either the
previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

NAME = "checkpoint.pt"


def path(directory: str | Path) -> Path:
    return Path(directory) / NAME


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to directory/checkpoint.pt atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    return d / NAME


def load(directory: str | Path) -> dict[str, Any] | None:
    """The last complete checkpoint in `directory`, or None when there is none."""
    p = path(directory)
    if not p.is_file():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)


def remove_partial(directory: str | Path) -> None:
    """Delete temp files left by a writer killed mid-save (call only from that writer)."""
    for stale in Path(directory).glob(".checkpoint-*.tmp"):
        stale.unlink(missing_ok=True)
