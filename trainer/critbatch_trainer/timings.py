"""Where one trainer process's wall time went, printed as one log line at the end.

A sweep's wall time is training and FID evaluation only if starting a trial is cheap;
`bench.overhead` reads these lines from the trials' logs to show what is not (docs/trainer.md,
"Where a trial's time goes"). Not part of the result: a group's results share 4 KiB.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields

PREFIX = "timings:"


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Timings:
    """Seconds per phase: `start` is the interpreter and imports (until the trial is set up),
    `setup` data, feature network and real statistics, `train` the steps alone."""

    start: float = 0.0
    setup: float = 0.0
    train: float = 0.0
    evaluate: float = 0.0
    noise_scale: float = 0.0
    checkpoint: float = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)

    def line(self) -> str:
        """`timings: start=3.184 setup=0.412 ...` (seconds), for a log."""
        return PREFIX + "".join(f" {f.name}={getattr(self, f.name):.3f}" for f in fields(self))


def parse_line(line: str) -> dict[str, float] | None:
    """The phases of a `Timings.line()`, or None when `line` is not one."""
    text = line.strip()
    at = text.find(PREFIX)
    if at < 0:
        return None
    out = {}
    for item in text[at + len(PREFIX):].split():
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            return None
    names = {f.name for f in fields(Timings)}
    return out if set(out) == names else None
