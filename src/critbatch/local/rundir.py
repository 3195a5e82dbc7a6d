"""A local run's output directory: its lock, the manifest and status files, the events log.

    run.lock              flock-ed by the run using the directory; holds its pid
    sweep.yaml            the manifest with its current status (what `kubectl get -o yaml` shows)
    status.yaml           the status alone (the CR status schema)
    events.jsonl          what the runner did: starts, restarts, stops, warnings
    trials/b<B>-s<S>/     trainer.log, result.json (the trainer's result), checkpoint/
    prometheus/           the private server's config, data and log (--with-prometheus);
                          targets/trials.json, the file_sd targets (also for --prometheus URL)
    critbatch.png/.svg    the plot; summary.md the Markdown summary
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from critbatch.errors import InputError, OutputError
from critbatch.files import atomic_write, check_values, dump_yaml, load_yaml, read_text
from critbatch.local.options import RunError
from critbatch.spec import Sweep, parse_sweep
from critbatch.vocabulary import TrialKey

LOCK_NAME = "run.lock"  # held (flock) by the one run writing the directory; holds its pid

# Fields whose change changes N(b), so that a resumed trial would not be the trial that ran.
# Not cudaGraph or recomputeActivations: both train exactly as without them (same N(b)).
# fusedAttention computes the same function with other rounding: another run of each seed.
SAME_FIELDS = (("model", "model"), ("image_size", "imageSize"), ("channels", "channels"),
               ("width", "width"), ("z_dim", "zDim"), ("ema_start", "emaStart"),
               ("dataset", "dataset"), ("inception", "inception"), ("device", "device"),
               ("micro_batch", "microBatch"), ("fused_attention", "fusedAttention"),
               ("bf16", "bf16"),
               ("reproducible_cpu", "reproducibleCPU"))


def load_manifest(path: Path) -> dict[str, Any]:
    """The sweep manifest from a YAML file, or a one-line error naming the file or the field."""
    label = f"SWEEP: {path}"
    data = load_yaml(read_text(path, "SWEEP"), label, finite=False)
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__}"
        raise RunError(f"{label}: {what}; it must hold one CriticalBatchSweep mapping")
    # The spec must be finite; a status (a run's own sweep.yaml) is the planner's and ignored.
    check_values({k: v for k, v in data.items() if k != "status"}, label, fields="")
    return data


def unwritable_reason(path: Path, exc: OSError) -> str:
    """An OSError's reason; for a path under a file, which file is in the way."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            break
    return exc.strerror or str(exc)


def check_same_sweep(old: Mapping[str, Any], now: Sweep, out: Path) -> None:
    """A resumed run may add batch sizes or seeds, never change what a trial means."""
    try:
        before = parse_sweep(old)
    except InputError as exc:
        raise RunError(f"--resume: {out / 'sweep.yaml'}: {exc}") from None
    if before.name != now.name:
        raise RunError(f"metadata.name: {now.name!r} differs from the run in {out} "
                       f"({before.name!r})")
    fields = [(f"spec.trainer.{spec_name}", getattr(before.trainer, name),
               getattr(now.trainer, name)) for name, spec_name in SAME_FIELDS]
    fields += [("spec.optimizer", before.optimizer, now.optimizer),
               ("spec.target", before.target, now.target)]
    for name, old_value, new_value in fields:  # what defines a trial's N(b)
        if old_value != new_value:
            values = (f" ({json.dumps(new_value)}, the run has {json.dumps(old_value)})"
                      if _is_scalar(old_value) and _is_scalar(new_value) else "")
            raise RunError(f"{name}: differs from the run in {out}{values}: a resumed "
                           "run may only add batch sizes or seeds")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _replace(path: Path, text: str) -> None:
    """Replace `path` whole; a failed write (a full disk) leaves the old file and says so."""
    try:
        atomic_write(path, text)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


class RunDir:
    """The output directory of one run: created, locked for the run, written file by file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest_file = self.path / "sweep.yaml"
        self.status_file = self.path / "status.yaml"
        self._lock_file: IO[str] | None = None
        self._written: tuple[dict[str, Any], dict[str, Any]] | None = None

    def trial_dir(self, key: TrialKey) -> Path:
        return self.path / "trials" / key.name

    def create(self) -> None:
        """Make the directory (and its parents), or a RunError naming --out and why not."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunError(f"--out: {out} exists and is not a directory")
        if out.is_symlink() and not out.exists():
            raise RunError(f"--out: {out} is a symbolic link to {os.readlink(out)}, "
                           "which does not exist")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"--out: cannot create {out}: {unwritable_reason(out, exc)}") from None

    def lock(self) -> str | None:
        """Hold an exclusive flock on OUT/run.lock until unlock(): two runs writing one
        directory would each count the other's trials as their own. Returns a warning when the
        file system has no locks (the run goes on unguarded)."""
        path = self.path / LOCK_NAME
        warning = None
        try:
            f = open(path, "a+")  # noqa: SIM115 - held until unlock()
        except OSError as exc:
            raise RunError(f"--out: cannot write to {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read(32).strip()
            f.close()
            by = f" (pid {pid})" if pid.isdigit() else ""
            raise RunError(f"--out: {self.path} is in use by another critbatch run{by}: wait "
                           "for it to end, or choose another directory") from None
        except OSError as exc:
            warning = (f"{path}: cannot lock ({exc.strerror}): make sure no other run uses "
                       "this directory")
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        except OSError as exc:
            f.close()
            raise RunError(f"--out: cannot write to {self.path}: {exc.strerror}") from None
        self._lock_file = f
        return warning

    def unlock(self) -> None:
        """Release the directory (the lock file stays; it is free once unlocked)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def write_manifest(self, manifest: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """sweep.yaml: the manifest with the run's status, when it has one."""
        doc = {k: v for k, v in manifest.items() if k != "status"}
        if status:
            doc["status"] = dict(status)
        _replace(self.manifest_file, dump_yaml(doc))

    def write_status(self, manifest: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """status.yaml, then sweep.yaml with the same status; nothing when both are as this
        object last wrote them (the runner calls this after every round, twice a second,
        and a round between two scrapes changes nothing)."""
        now = (dict(manifest), dict(status))
        if now == self._written:
            return
        _replace(self.status_file, dump_yaml(now[1]))
        self.write_manifest(manifest, status)
        self._written = copy.deepcopy(now)

    def append_event(self, record: Mapping[str, Any]) -> None:
        """One JSON line in events.jsonl, or an OutputError naming the file."""
        path = self.path / "events.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
