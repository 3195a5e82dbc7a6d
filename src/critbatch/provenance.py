"""Where a trial ran: the `hardware` object of a trainer's result (docs/contracts.md).

N(b) on the CPU depends on the CPU's instruction set, on a GPU on its model, so a sweep
whose trials ran on different hardware mixes numerics. The object comes from a trainer,
which may be the user's own image: readers take only the known keys with short values.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_TEXT = 40
TEXT_KEYS = ("device", "cpu", "isa", "gpu", "torch")
_NOISE = re.compile(r"\((?:R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@\s*[\d.]+\s*[GM]Hz")
_PRINTABLE = re.compile(r"^[ -~]*$")


def short_text(text: str, limit: int = MAX_TEXT) -> str:
    """A model name without trademarks, clock or padding, at most `limit` characters."""
    out = " ".join(_NOISE.sub(" ", text).split())
    return out[:limit].rstrip()


def cpu_model() -> str:
    """The CPU's model name (Linux' /proc/cpuinfo, else what the platform says), shortened."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return short_text(value)
    except OSError:
        pass
    return short_text(platform.processor() or platform.machine() or "unknown")


def _field_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_TEXT or not _PRINTABLE.match(value):
        return None
    return value


def hardware_fields(h: Any) -> dict[str, str | int | bool]:
    """The well-formed part of a `hardware` object: known keys, short printable strings,
    `threads` an int in 1..4096, `reproducible` a bool; anything else is dropped."""
    if not isinstance(h, Mapping):
        return {}
    out: dict[str, str | int | bool] = {}
    for key in TEXT_KEYS:
        text = _field_text(h.get(key))
        if text is not None:
            out[key] = text
    threads = h.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 4096:
        out["threads"] = threads
    if isinstance(h.get("reproducible"), bool):
        out["reproducible"] = h["reproducible"]
    return out


def hardware_summary(h: Mapping[str, Any] | None) -> str:
    """One line naming what decides a trial's numerics: two trials with different lines may
    reach different N(b) from the same seed. `unknown` when nothing usable is given."""
    f = hardware_fields(h)
    if not f:
        return "unknown"
    device = f.get("device", "?")
    if device == "cuda" or "gpu" in f:
        parts = [f"{device} {f.get('gpu', '?')}"]
    else:
        isa = f" ({f['isa']})" if "isa" in f else ""
        parts = [f"{device} {f.get('cpu', '?')}{isa}"]
        if "threads" in f:
            parts.append(f"{f['threads']} thread{'s' if f['threads'] != 1 else ''}")
        if f.get("reproducible"):
            parts.append("reproducible")
    if "torch" in f:
        parts.append(f"torch {f['torch']}")
    return ", ".join(parts)
