"""The reference run whose noise ratio predicts b* (Proposition 3.4; docs/science.md).

Locally there is no namespace: a reference is a run's directory or status file, by default
the sibling of this run's output directory named after spec.reference.sweep. It may still be
running, so it is reread whenever its status file changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from critbatch import planner
from critbatch.errors import InputError
from critbatch.files import load_yaml, read_text
from critbatch.local.options import RunOptions
from critbatch.spec import Sweep


@dataclass(frozen=True)
class ReferenceRun:
    """What a reference run's status gives Proposition 3.4, or why it gives nothing (yet)."""

    path: Path
    values: planner.ReferenceStatus = planner.NO_REFERENCE
    problem: str | None = None


def reference_path(sweep: Sweep, options: RunOptions) -> Path | None:
    """Where this run's reference status is: --reference-run, else spec.reference.sweep's run
    (runs/<name>/, where `critbatch run` put that sweep by default)."""
    if options.reference_run is not None:
        path = Path(options.reference_run)
        return path / "status.yaml" if path.is_dir() or not path.suffix else path
    if sweep.reference is not None and sweep.reference.sweep:
        return Path(options.out_dir).parent / sweep.reference.sweep / "status.yaml"
    return None


def read_reference(path: Path) -> ReferenceRun:
    """The reference's noise ratio, Θ and |S|, read as the operator reads a reference sweep.

    Takes a run's status.yaml or a whole resource (a run's sweep.yaml, `kubectl get -o yaml`).
    A missing or unfinished reference is a problem to report, never an error: the sweep runs
    and is measured anyway.
    """
    where = path.parent if path.name == "status.yaml" else path
    if not path.exists():
        return ReferenceRun(path, problem=f"reference: no finished run in {where} (no "
                            f"{path.name})")
    try:
        data = load_yaml(read_text(path, "reference"), f"reference: {path}", finite=False)
    except InputError as exc:
        return ReferenceRun(path, problem=str(exc))
    if isinstance(data, dict) and isinstance(data.get("status"), dict) and "spec" in data:
        data = data["status"]
    if not isinstance(data, dict):
        return ReferenceRun(path, problem=f"reference: {path} holds no sweep status")
    values = planner.reference_from_status(data)
    problem = None if values.noise_ratio is not None else (
        f"reference: {where} has no measured b* yet (phase {data.get('phase', 'unknown')}), "
        "so no noise ratio")
    return ReferenceRun(path, values, problem)


class ReferenceWatcher:
    """The reference run of one run, reread only when its status file changes."""

    def __init__(self, sweep: Sweep, options: RunOptions, own_status: Path) -> None:
        self.sweep = sweep
        self.options = options
        self.own_status = own_status
        # (the reference file's identity when read, what it said)
        self._last: tuple[tuple[int, ...] | None, ReferenceRun] | None = None

    def current(self) -> ReferenceRun | None:
        """The reference as it is now; None when there is none to read: none named, or a ratio
        given on the command line (which wins over any run)."""
        if self.options.reference_noise_ratio is not None:
            return None
        path = reference_path(self.sweep, self.options)
        if path is None:
            return None
        if path.resolve() == self.own_status.resolve():
            return ReferenceRun(path, problem="reference: names this run itself; a reference "
                                "is another sweep of the same architecture")
        try:
            st = path.stat()  # a run replaces its status file whole: a new inode each write
            ident: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            ident = None
        if self._last is None or ident is None or self._last[0] != ident:
            ref = read_reference(path)
            if ref.problem and ident is None and self.options.reference_run is None:
                ref = replace(ref, problem=f"{ref.problem}: run the reference sweep first (its "
                              "output beside this run's), or pass --reference-run DIR")
            self._last = (ident, ref)
        return self._last[1]
