"""The termination log: a trial's (or a group's) result where Kubernetes reads it.

Kubernetes keeps the first 4096 bytes of a container's termination message, so the text is
kept under TERMINATION_LIMIT: a group's results shed their `hardware` objects, then the
sweep's name, before any result is lost. The file is written in place, not replaced: in a
container it is a single mounted file that a rename cannot replace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from critbatch_trainer.settings import PROG

TERMINATION_LIMIT = 4000  # bytes; Kubernetes keeps 4096 of a termination message


# What result lines give up, stage by stage, when a group's lines would not fit: first the
# hardware, then the sweep's name (the reader knows it, and it may have 253 characters). Eight
# lines without both fit with room to spare; the metrics keep everything.
_SHED = (("hardware",), ("sweep",))


def _without(line: str, keys: tuple[str, ...]) -> str:
    try:
        result = json.loads(line)
    except ValueError:
        return line
    if not isinstance(result, dict):
        return line
    for key in keys:
        result.pop(key, None)
    return json.dumps(result, separators=(",", ":"))


def _size(lines: list[str]) -> int:
    return sum(len(line.encode()) + 1 for line in lines)


def termination_text(results: list[str], failures: list[str]) -> str:
    """Results in order, then as many failure lines as fit in the termination message.

    Results that would not fit shed fields stage by stage (`_SHED`), never a number.
    """
    lines = list(results)
    for keys in _SHED:
        if _size(lines) <= TERMINATION_LIMIT:
            break
        lines = [_without(line, keys) for line in lines]
    size = _size(lines)
    for line in failures:
        size += len(line.encode()) + 1
        if size > TERMINATION_LIMIT:
            break
        lines.append(line)
    return "\n".join(lines)


def write_termination_log(path: str | None, text: str) -> None:
    """Write `text` (cut to TERMINATION_LIMIT bytes) to `path`; nothing without a path or a
    text. A file that cannot be written costs a warning, not the trial."""
    if not path or not text:
        return
    try:
        Path(path).write_text(text.encode()[:TERMINATION_LIMIT].decode(errors="ignore"))
    except OSError as e:
        print(f"{PROG}: warning: cannot write termination log {path}: {e.strerror}",
              file=sys.stderr, flush=True)
