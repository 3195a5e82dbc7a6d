"""What a trial or an earlier run left on disk, read and checked before anything trusts it.

The trainer may be the user's own program and a status file may be damaged: a trial's result
counts only when it is this trial's and has the protocol's types (docs/contracts.md), and a
status to resume from is checked where the runner and the planner rely on it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critbatch import planner
from critbatch.files import load_yaml, read_text
from critbatch.local.options import RunError
from critbatch.protocol import result_problem, short_json, type_name
from critbatch.vocabulary import TrialKey

MAX_RESULT_BYTES = 64 * 1024  # a result is one line of a few hundred bytes


@dataclass(frozen=True)
class ResultRead:
    """A trial's result, or why what its trainer left is not one (None, None: nothing yet)."""

    result: dict[str, Any] | None = None
    problem: str | None = None


def _parse_result(text: str, key: TrialKey, *, sweep: str | None,
                  max_steps: int | None) -> ResultRead:
    try:
        data = json.loads(text)
    except RecursionError:
        return ResultRead(problem="nested too deeply")
    except ValueError as exc:
        return ResultRead(problem=f"not JSON ({exc})" if text.strip() else "empty")
    problem = result_problem(data, key, sweep=sweep, max_steps=max_steps)
    return ResultRead(problem=problem) if problem else ResultRead(result=data)


def read_result(path: Path, key: TrialKey, *, sweep: str | None = None,
                max_steps: int | None = None) -> ResultRead:
    """The trainer's result file (docs/contracts.md) for trial `key`: nothing when absent, the
    result when valid, else the problem (too large, not UTF-8, not JSON, another trial's)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ResultRead(problem="not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return ResultRead()
    except OSError as exc:
        return ResultRead(problem=f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_RESULT_BYTES:
        return ResultRead(problem=f"larger than {MAX_RESULT_BYTES // 1024} KiB")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return ResultRead(problem="not UTF-8 text")
    return _parse_result(text, key, sweep=sweep, max_steps=max_steps)


def result_from_log(path: Path, key: TrialKey, *, sweep: str | None = None,
                    max_steps: int | None = None) -> ResultRead:
    """The trainer's last stdout line, the fallback to the result file: a problem only when
    that line is a JSON object, for any other line is just the log's last words."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - MAX_RESULT_BYTES - 1))
            tail = f.read()
    except OSError:
        return ResultRead()
    pieces = tail.split(b"\n")
    cut = pieces.pop(0) if size > len(tail) else b""  # the end of a line begun before
    lines = [ln.strip() for ln in pieces if ln.strip() and not ln.startswith(b"# ")]
    if not lines:
        if cut.strip().endswith(b"}"):
            return ResultRead(problem=f"its last line is longer than "
                              f"{MAX_RESULT_BYTES // 1024} KiB")
        return ResultRead()
    if not lines[-1].startswith(b"{"):
        return ResultRead()
    return _parse_result(lines[-1].decode(errors="replace"), key, sweep=sweep,
                         max_steps=max_steps)


# A status row's fields (the CR status schema) and the types a resumed run takes from it.
_TRIAL_FIELDS: dict[str, tuple[type, ...]] = {
    "batchSize": (int,), "seed": (int,), "phase": (str,),
    "steps": (int, float, type(None)), "sfo": (int, float, type(None)),
    "value": (int, float, type(None)), "fid": (int, float, type(None)),
    "restarts": (int, type(None)),
    "source": (str, type(None)), "reason": (str, type(None)), "job": (str, type(None)),
    "selectedBecause": (str, type(None)), "generatorParams": (int, type(None)),
    "datasetSize": (int, type(None)),
}
_PHASES = {p.value for p in planner.Phase}


def read_status(path: Path) -> dict[str, Any]:
    """A run's status.yaml for --resume ({} when there is none), checked where the runner and
    the planner trust it: a damaged one is a RunError naming the file and the field."""
    if not os.path.lexists(path):
        return {}
    data = load_yaml(read_text(path, "--resume"), f"--resume: {path}", finite=False)
    problem = status_problem(data)
    if problem:
        raise RunError(f"--resume: {path}: {problem} (damaged: remove it to resume from the "
                       "trials' result files alone)")
    return data


def status_problem(data: Any) -> str | None:
    """What makes `data` no status a run can resume from, or None."""
    if not isinstance(data, dict):
        return "empty" if data is None else f"expected a mapping, got {type(data).__name__}"
    trials = data.get("trials")
    if trials is None:
        trials = []
    if not isinstance(trials, list):
        return f"trials: expected a list, got {type(trials).__name__}"
    seen: dict[tuple[int, int], int] = {}
    for i, t in enumerate(trials):
        where = f"trials[{i}]"
        if not isinstance(t, dict):
            return f"{where}: expected a mapping, got {type(t).__name__}"
        for name in ("batchSize", "seed", "phase"):
            if name not in t:
                return f"{where}.{name}: missing"
        for name, types in _TRIAL_FIELDS.items():
            value = t.get(name)
            if isinstance(value, bool) or not isinstance(value, types):
                return f"{where}.{name}: expected {' or '.join(map(type_name, types))}, got " \
                       f"{short_json(value)}"
            if isinstance(value, int | float) and not (math.isfinite(value) and value >= 0):
                return f"{where}.{name}: must be a finite number >= 0, got {short_json(value)}"
        if t["phase"] not in _PHASES:
            return f"{where}.phase: expected one of {', '.join(sorted(_PHASES))}, got " \
                   f"{short_json(t['phase'])}"
        k = (t["batchSize"], t["seed"])
        if k in seen:
            return f"{where}: batch size {k[0]}, seed {k[1]} again (as trials[{seen[k]}])"
        seen[k] = i
    conditions = data.get("conditions")
    if conditions is not None and not (isinstance(conditions, list) and all(
            isinstance(c, dict) and isinstance(c.get("type"), str)
            and isinstance(c.get("status"), str) for c in conditions)):
        return "conditions: expected a list of mappings with a type and a status"
    return None
