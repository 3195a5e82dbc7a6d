"""Checkpoints written atomically and durably (critbatch.files.atomic_write: a temp file,
fsync, rename over the old one, fsync of the directory).

A kill -9 mid-write leaves at worst a stray temp file (removed on the next resume);
`checkpoint.pt` is always either the previous complete checkpoint or the new complete one.

Loading never executes code from the file: torch's weights-only unpickler accepts tensors, plain
data and SAFE_GLOBALS only. A file that cannot be read or applied is set aside and the run
starts over, since resuming would fail the same way on every retry.
"""

from __future__ import annotations

import collections
import copy
import errno
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from critbatch.files import atomic_write
from critbatch_trainer.settings import PROG, ConfigError

NAME = "checkpoint.pt"
CORRUPT = NAME + ".corrupt-"
PROBE_PREFIX = ".checkpoint-"  # the write test of check_directory
KEEP_CORRUPT = 3  # set-aside files kept for inspection, newest first
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# The only non-tensor, non-plain type in a trainer state: nn.Module.state_dict() returns an
# OrderedDict. Optimizer states (Adam, RMSprop, timm's AdaBelief), torch generator states, the
# noise-scale EMA, the FID history and the identity are tensors, dicts, lists, tuples, str,
# int, float, bool and None, which weights-only loading reads without an allowlist.
SAFE_GLOBALS: tuple[type, ...] = (collections.OrderedDict,)
torch.serialization.add_safe_globals(list(SAFE_GLOBALS))


class WriteError(Exception):
    """A checkpoint could not be written (disk full, I/O error); the message is one line."""


class CorruptCheckpoint(Exception):
    """checkpoint.pt exists but is not a checkpoint this trainer can read; says why."""


def path(directory: str | Path) -> Path:
    return Path(directory) / NAME


def check_directory(directory: str | Path) -> None:
    """ConfigError unless `directory` is, or can be created as, a writable directory.

    Called before training so a bad --checkpoint-dir is a configuration error (exit 2, not
    retried) rather than a crash at the first save.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"checkpoint-dir: {d} exists and is not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=PROBE_PREFIX, suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise WriteError(f"checkpoint-dir: disk full at {d} ({e.strerror})") from None
        raise ConfigError(f"checkpoint-dir: cannot write to {d}: {e.strerror or e}") from None
    if path(d).exists() and not path(d).is_file():
        raise ConfigError(f"checkpoint-dir: {path(d)} exists and is not a file")


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch.save reports a failed write as a RuntimeError."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to directory/checkpoint.pt atomically; WriteError when the disk refuses.

    On a failed write the previous checkpoint is left as it was.
    """
    d = Path(directory)
    try:
        return _save(d, state)
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None:
            raise
        if cause.errno in DISK_FULL:
            raise WriteError(f"checkpoint-dir: disk full writing {d / NAME} "
                             f"({cause.strerror})") from e
        raise WriteError(f"checkpoint-dir: cannot write {d / NAME}: "
                         f"{cause.strerror or cause}") from e


def _save(d: Path, state: dict[str, Any]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / NAME, lambda fh: torch.save(state, fh), durable=True, mode=0o600)
    return d / NAME


def load(directory: str | Path) -> Any:
    """The last complete checkpoint in `directory`, or None when there is none.

    CorruptCheckpoint when the file is truncated, garbage, or asks to build anything beyond
    tensors, plain data and SAFE_GLOBALS (refused before anything in it runs).
    """
    p = path(directory)
    if not p.is_file():
        return None
    if p.stat().st_size == 0:
        raise CorruptCheckpoint("empty file")
    try:
        with open(p, "rb") as fh:
            try:
                return torch.load(fh, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CorruptCheckpoint(_reason(e)) from e
    except PermissionError as e:  # from open: the file may be fine, this process cannot read it
        raise ConfigError(f"checkpoint-dir: cannot read {p}: {e.strerror}") from None


def _reason(e: BaseException) -> str:
    """One short line saying why a checkpoint could not be read or applied."""
    text = str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        _, marker, after = text.partition("WeightsUnpickler error:")
        detail = (f"it asks for {found.group(1)}" if found
                  else after.strip().splitlines()[0] if marker and after.strip()
                  else "not tensors and plain data")
        return f"refused by the weights-only loader: {detail}"
    first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    first = first.split(". ", 1)[0]
    why = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return why if len(why) <= 160 else why[:157] + "..."


def set_aside(directory: str | Path) -> Path:
    """Rename checkpoint.pt to checkpoint.pt.corrupt-<n>, keeping the newest KEEP_CORRUPT."""
    d = Path(directory)
    numbers = sorted(int(f.name[len(CORRUPT):]) for f in d.glob(CORRUPT + "*")
                     if f.name[len(CORRUPT):].isdigit())
    target = d / f"{CORRUPT}{(numbers[-1] if numbers else 0) + 1}"
    try:
        os.replace(path(d), target)
    except OSError as e:
        raise WriteError(f"checkpoint-dir: cannot set aside {path(d)}: "
                         f"{e.strerror or e}") from e
    for old in numbers[:max(0, len(numbers) + 1 - KEEP_CORRUPT)]:
        (d / f"{CORRUPT}{old}").unlink(missing_ok=True)
    return target


def resume(directory: str | Path, apply: Callable[[dict[str, Any]], None],
           current: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> bool:
    """Apply the directory's checkpoint with `apply`; True if it did.

    A checkpoint that cannot be read, or that `apply` rejects with anything but a ConfigError
    (a checkpoint of another run: refused, exit 2), is set aside and False returned, with the
    trial rolled back to `current()` as it was before: a corrupt checkpoint would otherwise
    crash every restart until the trial is given up.
    """
    remove_partial(directory)
    try:
        state = load(directory)
        if state is None:
            return False
        if not isinstance(state, dict) or "version" not in state:
            raise CorruptCheckpoint(f"not a trainer checkpoint ({type(state).__name__})")
    except CorruptCheckpoint as e:
        _discard(directory, str(e), log)
        return False
    before = copy.deepcopy(current())
    try:
        apply(state)
    except ConfigError:
        raise
    except Exception as e:
        apply(before)
        _discard(directory, _reason(e), log)
        return False
    return True


def _discard(directory: str | Path, why: str, log: Callable[[str], None]) -> None:
    kept = set_aside(directory)
    log(f"{PROG}: warning: checkpoint-dir: cannot resume from {path(directory)} ({why}); "
        f"kept as {kept.name}, starting from step 0")


def remove_partial(directory: str | Path) -> None:
    """Delete temp files left by a writer killed mid-save (call only from that writer)."""
    for pattern in (f".{NAME}.*.tmp", PROBE_PREFIX + "*.tmp"):
        for stale in Path(directory).glob(pattern):
            stale.unlink(missing_ok=True)
