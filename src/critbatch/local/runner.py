"""`critbatch run`: a CriticalBatchSweep's trials as local trainer processes.

The loop is the operator's, with processes instead of Jobs: observe every trial (process exit,
result file, metrics), ask the shared planner what to start and stop, do it, write the status.
Finished trials are read from their result files, so `--resume` never reruns one, and a trial
killed mid-run restarts from its checkpoint (up to spec.trainer.backoffLimit times, as a Job
would).

Output directory:

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

import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from critbatch import planner, report
from critbatch.errors import InputError, OutputError
from critbatch.files import check_values, load_yaml, read_text
from critbatch.local import prometheus as prom
from critbatch.local.processes import ExitKind, Supervisor, classify, log_tail, thread_limit
from critbatch.local.progress import Progress, RateMeter, TrialView
from critbatch.metrics import (
    MetricsUnavailable,
    PrometheusClient,
    TrialMetrics,
    result_problem,
    scrape,
)
from critbatch.spec import Sweep, TrialKey, parse_sweep, resume_checkpoint_every
from critbatch.trainer_args import trainer_args

RUN_LABEL = "critbatch_run"  # a target label that tells this run's series from older ones
# The signals that stop a run like Ctrl-C: a `kill`, a closed terminal.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
LOCK_NAME = "run.lock"  # held (flock) by the one run writing the directory; holds its pid
MAX_RESULT_BYTES = 64 * 1024  # a result is one line of a few hundred bytes


class RunError(InputError):
    """A local run that cannot start: the message names the option or path at fault."""


@dataclass
class RunOptions:
    """How to run a sweep locally; the defaults are what `critbatch run SWEEP.yaml` does."""

    out_dir: Path
    resume: bool = False
    # auto (from spec.metrics) | direct | prometheus (an existing server) | with-prometheus
    metrics: str = "auto"
    prometheus_url: str | None = None
    sd_file: Path | None = None  # file_sd targets for an existing server to read
    trainer_command: Sequence[str] = (sys.executable, "-m", "critbatch_trainer")
    threads: int | None = None
    poll_interval: float = 0.5
    linger: float | None = None
    scrape_interval: float = 1.0
    reference_noise_ratio: float | None = None
    # A finished run (its directory or status file) whose noise ratio predicts b*; default:
    # runs/<spec.reference.sweep>/ beside this run's output directory.
    reference_run: Path | None = None
    retry_failed: bool = False  # with resume: start Failed trials again


@dataclass
class TrialState:
    """What the runner knows about one trial beyond its process."""

    key: TrialKey
    dir: Path
    port: int | None = None
    restarts: int = 0
    stop_reason: str | None = None
    final: planner.Observation | None = None
    metrics: TrialMetrics | None = None
    rate: RateMeter = field(default_factory=RateMeter)
    started: bool = False

    @property
    def result_file(self) -> Path:
        return self.dir / "result.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "trainer.log"


def trial_dir_name(key: TrialKey) -> str:
    return f"b{key.batch_size:04d}-s{key.seed}"


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


@dataclass(frozen=True)
class ResultRead:
    """A trial's result, or why what its trainer left is not one (None, None: nothing yet)."""

    result: dict[str, Any] | None = None
    problem: str | None = None


# The result's other keys (docs/contracts.md) and the types each may have when present.
_RESULT_TYPES: dict[str, tuple[type, ...]] = {
    "sweep": (str,), "seed": (int,), "interpolated_steps": (int, float, type(None)),
    "sfo": (int, float, type(None)), "fid": (int, float, type(None)),
    "threshold": (int, float, type(None)), "max_steps": (int, type(None)),
    "wall_seconds": (int, float, type(None)), "generator_params": (int, type(None)),
    "dataset_size": (int, type(None)), "gradient_noise_scale": (int, float, type(None)),
    "hardware": (dict, type(None)),
}


def trial_result_problem(data: Any, key: TrialKey, sweep: str | None = None,
                         max_steps: int | None = None) -> str | None:
    """Why `data` is not the result of trial `key` (of sweep `sweep`), or None when it is.

    The trainer may be the user's own program: a result counts only when it is what
    `critbatch.metrics.result_problem` accepts, with the protocol's types, steps > 0 when
    reached and at most `max_steps`, and this trial's batch size and seed.
    """
    problem = result_problem(data)
    if problem is not None:
        return problem
    if "seed" not in data:
        return "seed: missing"
    for name, types in _RESULT_TYPES.items():
        value = data.get(name)
        if name in data and (isinstance(value, bool) or not isinstance(value, types)):
            return f"{name}: expected {' or '.join(map(_type_name, types))}, got {_short(value)}"
    if data["reached"] and data["steps"] == 0:
        return "steps: 0 for a trial that reached the target"
    if max_steps is not None and data["steps"] > max_steps:
        return f"steps {_short(data['steps'])} above spec.target.maxSteps {max_steps}"
    if (data["batch_size"], data["seed"]) != (key.batch_size, key.seed):
        return (f"batch size {data['batch_size']}, seed {data['seed']}: another trial's result "
                f"(this one is batch size {key.batch_size}, seed {key.seed})")
    if sweep is not None and "sweep" in data and data["sweep"] != sweep:
        return f"sweep {_short(data['sweep'])}: another sweep's result (this is {sweep!r})"
    return None


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "an object", type(None): "null"}.get(t, t.__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_result(text: str, key: TrialKey, sweep: str | None,
                  max_steps: int | None) -> ResultRead:
    try:
        data = json.loads(text)
    except RecursionError:
        return ResultRead(problem="nested too deeply")
    except ValueError as exc:
        return ResultRead(problem=f"not JSON ({exc})" if text.strip() else "empty")
    problem = trial_result_problem(data, key, sweep, max_steps)
    return ResultRead(problem=problem) if problem else ResultRead(result=data)


def read_result(path: Path, key: TrialKey, sweep: str | None = None,
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
    return _parse_result(text, key, sweep, max_steps)


def result_from_log(path: Path, key: TrialKey, sweep: str | None = None,
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
    return _parse_result(lines[-1].decode(errors="replace"), key, sweep, max_steps)


def check_trainer(command: Sequence[str]) -> None:
    """The trainer command's program exists and may run, or a RunError naming --trainer."""
    if not command or not command[0]:
        raise RunError("--trainer: must not be empty")
    program = command[0]
    if os.sep in program:
        if not os.path.exists(program):
            raise RunError(f"--trainer: no such file: {program}")
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise RunError(f"--trainer: {program} is not an executable file")
    elif shutil.which(program) is None:
        raise RunError(f"--trainer: no {program!r} on PATH")


_TRIAL_FIELDS: dict[str, tuple[type, ...]] = {
    "batchSize": (int,), "seed": (int,), "phase": (str,),
    "steps": (int, float, type(None)), "sfo": (int, float, type(None)),
    "fid": (int, float, type(None)), "restarts": (int, type(None)),
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
                return f"{where}.{name}: expected {' or '.join(map(_type_name, types))}, got " \
                       f"{_short(value)}"
            if isinstance(value, int | float) and not (math.isfinite(value) and value >= 0):
                return f"{where}.{name}: must be a finite number >= 0, got {_short(value)}"
        if t["phase"] not in _PHASES:
            return f"{where}.phase: expected one of {', '.join(sorted(_PHASES))}, got " \
                   f"{_short(t['phase'])}"
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


def _why(path: Path, exc: OSError) -> str:
    """An OSError's reason; for a path under a file, which file is in the way."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            break
    return exc.strerror or str(exc)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _value(value: Any) -> str:
    return json.dumps(value)


def metrics_mode(sweep: Sweep) -> tuple[str, str | None]:
    """What spec.metrics means on this machine: its Prometheus URL, a private server, or none.

    `source: prometheus` with a `prometheusURL` uses that server (it must read the run's
    targets file); without a URL the run starts its own; anything else scrapes directly.
    """
    if sweep.metrics.source == "prometheus":
        if sweep.metrics.prometheus_url:
            return "prometheus", sweep.metrics.prometheus_url
        return "with-prometheus", None
    return "direct", None


@dataclass(frozen=True)
class ReferenceRun:
    """What a reference run's status gives Proposition 3.4, or why it gives nothing (yet)."""

    path: Path
    noise_ratio: float | None = None
    generator_params: int | None = None
    dataset_size: int | None = None
    problem: str | None = None


def reference_path(sweep: Sweep, options: RunOptions) -> Path | None:
    """Where this run's reference status is: --reference-run, else spec.reference.sweep's run.

    Locally there is no namespace; the sibling of the output directory named after the
    reference sweep (runs/<name>/) is where `critbatch run` put that sweep by default.
    """
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
    ratio, params, size = planner.reference_from_status(data)
    problem = None if ratio is not None else (
        f"reference: {where} has no measured b* yet (phase {data.get('phase', 'unknown')}), "
        "so no noise ratio")
    return ReferenceRun(path, ratio, params, size, problem)


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` whole; a failed write (a full disk) leaves the old file and says so."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


class LocalRun:
    """One `critbatch run`: owns the output directory, the trial processes and Prometheus."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        options: RunOptions,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = dict(manifest)
        self.sweep: Sweep = parse_sweep(manifest)
        self.options = replace(options)
        if self.options.metrics == "auto":
            self.options.metrics, self.options.prometheus_url = metrics_mode(self.sweep)
        self.progress = progress or Progress()
        self.clock = clock
        self.out = Path(options.out_dir)
        self.run_id = secrets.token_hex(4)
        self.trials = {key: TrialState(key, self.out / "trials" / trial_dir_name(key))
                       for key in self.sweep.trials()}
        self.status: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.supervisor: Supervisor | None = None
        self.server: prom.PrometheusServer | None = None
        self.client: PrometheusClient | None = None
        self.interrupted = False
        self.interrupt_cause: str | None = None  # Ctrl-C, SIGTERM, SIGHUP, output closed (...)
        self.output_closed: str | None = None  # why the progress view can no longer write
        self.hurried = False  # interrupted again while stopping: trials were killed
        self.metrics_problem: str | None = None
        self._started = clock()
        self._last_metrics = -math.inf
        self._ports: set[int] = set()
        # (the reference file's identity when read, what it said): reread only when it changes
        self._reference: tuple[tuple[int, ...] | None, ReferenceRun] | None = None
        self._announced: tuple | None = None  # the reference and prediction last logged
        self._lock_file: Any = None

    # -- output directory ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Create or reopen the output directory and lock it; on --resume load what finished
        before. Every problem is a RunError naming the option or file, raised before any
        trial starts."""
        if self.options.retry_failed and not self.options.resume:
            raise RunError("--retry-failed: only with --resume (it restarts the failed trials "
                           "of an earlier run)")
        if self.options.metrics == "with-prometheus":
            prom.find_binary()  # fail before the output directory exists
        check_trainer(self.options.trainer_command)
        self._check_sd_file()
        self._make_out_dir()
        self._lock()
        try:
            self._reopen()
        except BaseException:
            self.unlock()
            raise

    def _check_sd_file(self) -> None:
        """--sd-file must be a file this run can write (Prometheus reads it)."""
        path = self.options.sd_file
        if path is None or self.options.metrics != "prometheus":
            return
        path = Path(path)
        if path.is_dir():
            raise RunError(f"--sd-file: {path} is a directory; name the file to write, e.g. "
                           f"{path / 'trials.json'}")
        try:
            prom.write_targets(path, [])
        except OSError as exc:
            raise RunError(f"--sd-file: cannot write {path}: {_why(path, exc)}") from None

    def _make_out_dir(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"--out: {self.out} exists and is not a directory")
        if self.out.is_symlink() and not self.out.exists():
            raise RunError(f"--out: {self.out} is a symbolic link to {os.readlink(self.out)}, "
                           "which does not exist")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"--out: cannot create {self.out}: {_why(self.out, exc)}") from None

    def _lock(self) -> None:
        """Hold an exclusive flock on OUT/run.lock for the whole run: two runs writing one
        directory would each count the other's trials as their own."""
        path = self.out / LOCK_NAME
        try:
            f = open(path, "a+")  # noqa: SIM115 - held until unlock()
        except OSError as exc:
            raise RunError(f"--out: cannot write to {self.out}: {exc.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read(32).strip()
            f.close()
            by = f" (pid {pid})" if pid.isdigit() else ""
            raise RunError(f"--out: {self.out} is in use by another critbatch run{by}: wait "
                           "for it to end, or choose another directory") from None
        except OSError as exc:  # a file system without locks: run unguarded, and say so
            self.warnings.append(f"{path}: cannot lock ({exc.strerror}): make sure no other "
                                 "run uses this directory")
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        except OSError as exc:
            f.close()
            raise RunError(f"--out: cannot write to {self.out}: {exc.strerror}") from None
        self._lock_file = f

    def unlock(self) -> None:
        """Release the output directory (the lock file stays; it is free once unlocked)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _reopen(self) -> None:
        saved = self.out / "sweep.yaml"
        if saved.exists() and not self.options.resume:
            raise RunError(f"--out: {self.out} already holds a run: pass --resume to continue "
                           "it, or choose another directory")
        if self.options.resume and saved.exists():
            self._check_same_sweep(load_manifest(saved))
            self.status = read_status(self.out / "status.yaml")
            if self.options.retry_failed:
                self._forget_failed()
            self._load_finished()
        self._write_manifest()

    # Fields whose change changes N(b), so that a resumed trial would not be the trial that
    # ran. Not cudaGraph: a CUDA-graph step trains exactly like the eager one (same N(b)).
    SAME_FIELDS = (("model", "model"), ("image_size", "imageSize"), ("channels", "channels"),
                   ("width", "width"), ("z_dim", "zDim"), ("ema_start", "emaStart"),
                   ("dataset", "dataset"), ("inception", "inception"), ("device", "device"),
                   ("bf16", "bf16"), ("reproducible_cpu", "reproducibleCPU"))

    def _check_same_sweep(self, old: Mapping[str, Any]) -> None:
        """A resumed run may add batch sizes or seeds, never change what a trial means."""
        try:
            before = parse_sweep(old)
        except InputError as exc:
            raise RunError(f"--resume: {self.out / 'sweep.yaml'}: {exc}") from None
        now = self.sweep
        if before.name != now.name:
            raise RunError(f"metadata.name: {now.name!r} differs from the run in {self.out} "
                           f"({before.name!r})")
        fields = [(f"spec.trainer.{spec_name}", getattr(before.trainer, name),
                   getattr(now.trainer, name)) for name, spec_name in self.SAME_FIELDS]
        fields += [("spec.optimizer", before.optimizer, now.optimizer),
                   ("spec.target", before.target, now.target)]
        for name, old_value, new_value in fields:  # what defines a trial's N(b)
            if old_value != new_value:
                values = (f" ({_value(new_value)}, the run has {_value(old_value)})"
                          if _is_scalar(old_value) and _is_scalar(new_value) else "")
                raise RunError(f"{name}: differs from the run in {self.out}{values}: a resumed "
                               "run may only add batch sizes or seeds")

    def _forget_failed(self) -> None:
        """Drop Failed trials from the planner's memory, so it plans them as Pending again.

        Only Failed ones: a Reached, Censored or Pruned trial is a result and stays final.
        """
        kept, dropped = [], []
        for t in self.status.get("trials") or []:
            (dropped if t.get("phase") == planner.Phase.Failed.value else kept).append(t)
        if dropped:
            self.status = {**self.status, "trials": kept}
        for t in dropped:
            self.log_event("retry", batch_size=t.get("batchSize"), seed=t.get("seed"),
                           reason=t.get("reason"))

    def _load_finished(self) -> None:
        by_key = {(t.get("batchSize"), t.get("seed")): t for t in self.status.get("trials", [])}
        for key, st in self.trials.items():
            old = by_key.get((key.batch_size, key.seed), {})
            got = self._read_result(st)
            if got.result is not None:
                st.final = self._final_from_result(st, got.result, old.get("source") or "local")
            elif got.problem is not None and not self.options.retry_failed:
                st.final = planner.Observation(
                    key, planner.Phase.Failed, steps=old.get("steps"), source="local",
                    reason=f"refused result: {st.result_file.name}: {got.problem}",
                    restarts=old.get("restarts") or 0)
            elif old.get("phase") == planner.Phase.Pruned.value:
                st.final = planner.Observation(
                    key, planner.Phase.Pruned, steps=old.get("steps"), fid=old.get("fid"),
                    source=old.get("source") or "local", reason=old.get("reason"),
                    restarts=old.get("restarts") or 0)
            if st.final is not None:
                st.restarts = st.final.restarts
                self._show("event", "resumed", batch_size=key.batch_size, seed=key.seed,
                           phase=st.final.phase.value)

    def _write_manifest(self) -> None:
        doc = {k: v for k, v in self.manifest.items() if k != "status"}
        if self.status:
            doc["status"] = self.status
        _atomic_write(self.out / "sweep.yaml", yaml.safe_dump(doc, sort_keys=False))

    def write_status(self) -> None:
        _atomic_write(self.out / "status.yaml", yaml.safe_dump(self.status, sort_keys=False))
        self._write_manifest()

    def log_event(self, kind: str, **fields: Any) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": kind,
                  **fields}
        path = self.out / "events.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self._show("event", kind, **fields)

    def _show(self, method: str, *args: Any, **fields: Any) -> None:
        """Call the progress view. When its output is gone (`critbatch run --json | head`, a
        closed terminal) the view goes quiet and the run stops like Ctrl-C."""
        try:
            getattr(self.progress, method)(*args, **fields)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.progress = Progress()
            self.output_closed = self.output_closed or \
                f"output closed: {(exc.strerror or 'broken pipe').lower()}"

    # -- metrics ------------------------------------------------------------------------------

    def _metrics_source(self) -> str:
        return "direct" if self.options.metrics == "direct" else "prometheus"

    def start_metrics(self) -> None:
        if self.options.metrics == "with-prometheus":
            self.server = prom.PrometheusServer(self.out / "prometheus",
                                                scrape_interval=self.options.scrape_interval)
            url = self.server.start()
            self.client = PrometheusClient(url, timeout=3.0)
            self.log_event("prometheus", url=url)
        elif self.options.metrics == "prometheus":
            if not self.options.prometheus_url:
                raise RunError("--prometheus: needs the server's URL")
            self.client = PrometheusClient(self.options.prometheus_url, timeout=3.0)
            self.log_event("prometheus", url=self.options.prometheus_url,
                           targets=str(self._sd_file()))

    def _sd_file(self) -> Path | None:
        if self.server is not None:
            return self.server.targets_file
        if self.options.metrics == "prometheus":
            return self.options.sd_file or self.out / "prometheus" / "targets" / "trials.json"
        return None

    def publish_targets(self) -> None:
        """Tell Prometheus (through its file_sd file) which trials are serving metrics now."""
        path = self._sd_file()
        if path is None or self.supervisor is None:
            return
        targets = []
        for name in self.supervisor.processes:
            st = self.trials[self._key_of(name)]
            if st.port:
                targets.append(prom.Target(f"127.0.0.1:{st.port}", {
                    RUN_LABEL: self.run_id, "trial": name}))
        try:
            prom.write_targets(path, targets)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None

    def read_metrics(self) -> None:
        """Update each running trial's metrics from its endpoint or from Prometheus."""
        if self.supervisor is None:
            return
        running = [self.trials[self._key_of(n)] for n in self.supervisor.processes]
        if self.client is not None:
            try:
                seen = self.client.trial_metrics(self.sweep.name, {RUN_LABEL: self.run_id})
            except MetricsUnavailable as exc:
                self.metrics_problem = f"Prometheus query failed: {exc}"
                return
            self.metrics_problem = None
            for st in running:
                m = seen.get((st.key.batch_size, st.key.seed))
                if m is not None:
                    self._note_metrics(st, m)
            return
        for st in running:
            if not st.port:
                continue
            try:
                seen = scrape(f"http://127.0.0.1:{st.port}/metrics", timeout=2.0)
            except MetricsUnavailable:
                continue  # still starting, or already gone
            m = seen.get((st.key.batch_size, st.key.seed))
            if m is not None:
                self._note_metrics(st, m)

    def _note_metrics(self, st: TrialState, m: TrialMetrics) -> None:
        st.metrics = m
        if m.step is not None:
            st.rate.add(m.step, self.clock())

    def _warn_once(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.log_event("warning", message=text)

    # -- processes ----------------------------------------------------------------------------

    @staticmethod
    def _name(key: TrialKey) -> str:
        return trial_dir_name(key)

    def _key_of(self, name: str) -> TrialKey:
        return next(k for k in self.trials if trial_dir_name(k) == name)

    def _linger(self) -> float:
        """Seconds a finished trainer keeps serving metrics: long enough to be read once more."""
        if self.options.linger is not None:
            return self.options.linger
        if self.options.metrics == "direct":
            return 2.0
        if self.options.metrics == "with-prometheus":
            return max(10.0, 5 * self.options.scrape_interval)
        return float(self.sweep.metrics.linger_seconds)

    def _new_port(self) -> int:
        """A free loopback port not handed to another trial of this run."""
        for _ in range(100):
            port = prom.free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no free loopback port")

    def start_trial(self, st: TrialState) -> None:
        assert self.supervisor is not None
        try:
            st.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{st.dir}: cannot create: {exc.strerror or exc}") from None
        st.port = self._new_port()
        st.metrics = None
        with contextlib.suppress(FileNotFoundError):
            st.result_file.unlink()  # a stale result must not stand for this attempt
        args = trainer_args(self.sweep, st.key, metrics_port=st.port,
                            checkpoint_dir=str((st.dir / "checkpoint").resolve()),
                            termination_log=str(st.result_file.resolve()),
                            linger=math.ceil(self._linger()))
        if not self.sweep.trainer.checkpoint_every:
            # Locally a kill -9 should cost little: checkpoint at every FID evaluation.
            args += ["--checkpoint-every", str(resume_checkpoint_every(self.sweep))]
        args += ["--metrics-host", "127.0.0.1"]
        argv = [*self.options.trainer_command, *args]
        try:
            proc = self.supervisor.start(self._name(st.key), argv, st.log_file)
        except OSError as exc:  # check_trainer passed, yet it cannot run (a bad interpreter)
            raise RunError(f"--trainer: cannot start {argv[0]}: {exc.strerror or exc}") from None
        st.started = True
        self.log_event("restart" if st.restarts else "start", batch_size=st.key.batch_size,
                       seed=st.key.seed, pid=proc.pid, port=st.port, restarts=st.restarts)

    def reap(self) -> None:
        """Turn ended processes into final observations, or restart them from checkpoint."""
        assert self.supervisor is not None
        for proc, code in self.supervisor.reap():
            st = self.trials[self._key_of(proc.name)]
            kind = classify(code)
            if kind is ExitKind.BAD_CONFIG and "metrics-port:" in log_tail(st.log_file):
                kind = ExitKind.CRASHED  # someone took the port first: worth another try
            got = self._read_result(st)
            if got.result is None and got.problem is None and kind is ExitKind.FINISHED:
                got = result_from_log(st.log_file, st.key, self.sweep.name,
                                      self.sweep.target.max_steps)
                if got.problem is not None:
                    got = replace(got, problem=f"last line of {st.log_file.name}: {got.problem}")
            elif got.problem is not None:
                got = replace(got, problem=f"{st.result_file.name}: {got.problem}")
            if got.result is not None:
                st.final = self._final_from_result(st, got.result, None)
                self.log_event("finished", batch_size=st.key.batch_size, seed=st.key.seed,
                               phase=st.final.phase.value, steps=st.final.steps,
                               source=st.final.source)
            elif got.problem is not None:  # a result that is not this trial's: never counted
                st.final = planner.Observation(
                    st.key, planner.Phase.Failed, steps=(st.metrics or TrialMetrics()).step,
                    source="local", reason=f"refused result: {got.problem}",
                    restarts=st.restarts)
                self.log_event("failed", batch_size=st.key.batch_size, seed=st.key.seed,
                               code=code, reason=st.final.reason)
            elif proc.stop_requested and st.stop_reason is not None:
                m = st.metrics or TrialMetrics()
                st.final = planner.Observation(
                    st.key, planner.Phase.Pruned, steps=m.step, fid=m.fid,
                    source=self._metrics_source(), reason=st.stop_reason, restarts=st.restarts)
                self.log_event("pruned", batch_size=st.key.batch_size, seed=st.key.seed,
                               steps=m.step, reason=st.stop_reason)
            elif proc.stop_requested:
                pass  # stopped by Ctrl-C: not final, resumable from its checkpoint
            elif kind in (ExitKind.FINISHED, ExitKind.BAD_CONFIG) or \
                    st.restarts >= self.sweep.trainer.backoff_limit:
                why = "exited 0 without a result" if kind is ExitKind.FINISHED else \
                    f"exit {code} ({kind.value})"
                tail = log_tail(st.log_file)
                st.final = planner.Observation(
                    st.key, planner.Phase.Failed, steps=(st.metrics or TrialMetrics()).step,
                    source="local", reason=f"{why}: {tail}" if tail else why,
                    restarts=st.restarts)
                self.log_event("failed", batch_size=st.key.batch_size, seed=st.key.seed,
                               code=code, reason=st.final.reason)
            else:
                st.restarts += 1
                self.log_event("trainer-exit", batch_size=st.key.batch_size, seed=st.key.seed,
                               code=code, exit=kind.value)
                self.start_trial(st)

    def _read_result(self, st: TrialState) -> ResultRead:
        return read_result(st.result_file, st.key, self.sweep.name, self.sweep.target.max_steps)

    def _final_from_result(
        self, st: TrialState, result: dict[str, Any], source: str | None
    ) -> planner.Observation:
        """The trainer's result, cross-checked with the last metrics read for the trial.

        The value kept is the trainer's own (the result file); `source` says which channel
        confirmed it: the metrics source when it saw the same final N(b), else
        "termination-message". A disagreement is a warning in the status.
        """
        if source is None:
            source = "termination-message"
            m = st.metrics
            if m is not None and m.finished:
                seen = m.steps_to_threshold if result["reached"] else m.step
                if seen is not None and float(seen) == float(result["steps"]):
                    source = self._metrics_source()
                else:
                    self._warn_once(
                        f"trial b={st.key.batch_size} seed={st.key.seed}: metrics say N = "
                        f"{seen}, the result file says {result['steps']}: using the result file")
        phase = planner.Phase.Reached if result["reached"] else planner.Phase.Censored
        return planner.Observation(st.key, phase, steps=result["steps"], fid=result.get("fid"),
                                   result=result, source=source, restarts=st.restarts)

    # -- the loop -----------------------------------------------------------------------------

    def observations(self) -> dict[TrialKey, planner.Observation]:
        out = {}
        running = set(self.supervisor.processes) if self.supervisor else set()
        for key, st in self.trials.items():
            if st.final is not None:
                out[key] = replace(st.final, restarts=st.restarts)
            elif self._name(key) in running:
                m = st.metrics or TrialMetrics()
                out[key] = planner.Observation(
                    key, planner.Phase.Running, steps=m.step, fid=m.fid,
                    source=self._metrics_source() if st.metrics else None,
                    restarts=st.restarts)
        return out

    def step(self) -> bool:
        """One round: reap, read metrics, plan, act, write. False once nothing is left to do."""
        assert self.supervisor is not None
        self.reap()
        now = self.clock()
        if now - self._last_metrics >= self.options.scrape_interval:
            self._last_metrics = now
            self.read_metrics()
        self.stop_confirmed()
        result = self.plan()
        # The planner's order: write the status first, then stop, then start.
        self.status = result.status
        self.write_status()
        for key, reason in result.stop:
            st = self.trials[key]
            if st.stop_reason is None and self._name(key) in self.supervisor.processes:
                st.stop_reason = reason
                self.log_event("stopping", batch_size=key.batch_size, seed=key.seed,
                               reason=reason)
                self.supervisor.request_stop(self._name(key))
        # Locally every trial is a process of its own, a pod's trials too.
        for key in (k for group in result.create for k in group):
            st = self.trials[key]
            if st.final is None and self._name(key) not in self.supervisor.processes:
                self.start_trial(st)
        self.publish_targets()
        self._show("update", self.status, self.views(), self.clock() - self._started)
        return bool(self.supervisor.processes) or bool(result.create)

    def stop_confirmed(self) -> None:
        """End a lingering trainer once its final metrics were read and its result is written.

        The linger exists so a scrape sees the final values; once this run has seen them there
        is nothing left to wait for.
        """
        assert self.supervisor is not None
        for name, proc in list(self.supervisor.processes.items()):
            st = self.trials[self._key_of(name)]
            if st.metrics is not None and st.metrics.finished and \
                    self._read_result(st).result is not None and not proc.stop_requested:
                self.supervisor.request_stop(name)

    def plan(self) -> planner.Plan:
        """The shared planner on what this run sees; the runner's own warnings added."""
        problems = [("MetricsUnavailable", self.metrics_problem)] if self.metrics_problem else []
        ref = self.reference()
        ratio, params, size = self.options.reference_noise_ratio, None, None
        if ratio is None and ref is not None:
            ratio, params, size = ref.noise_ratio, ref.generator_params, ref.dataset_size
        result = planner.plan(self.sweep, self.observations(),
                              reference_noise_ratio=ratio, reference_params=params,
                              reference_dataset_size=size,
                              previous_status=self.status or None, problems=problems)
        status = dict(result.status)
        extra = list(self.warnings)
        if ref is not None and ref.problem:
            extra.append(ref.problem)  # where it looked: the planner's warning has the name only
        self._announce_prediction(status.get("criticalBatchSize") or {}, ref, ratio)
        status["warnings"] = list(status.get("warnings") or []) + [
            w for w in extra if w not in (status.get("warnings") or [])]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status["conditions"] = planner.merge_conditions(
            self.status.get("conditions"), status.get("conditions") or [], now)
        return replace(result, status=status)

    def reference(self) -> ReferenceRun | None:
        """The reference run's status, reread when it changes (it may still be running).

        None when there is no reference run to read: none named, or a ratio given on the
        command line (which wins over any run).
        """
        if self.options.reference_noise_ratio is not None:
            return None
        path = reference_path(self.sweep, self.options)
        if path is None:
            return None
        if path.resolve() == (self.out / "status.yaml").resolve():
            return ReferenceRun(path, problem="reference: names this run itself; a reference "
                                "is another sweep of the same architecture")
        try:
            st = path.stat()  # a run replaces its status file whole: a new inode each write
            ident: tuple[int, ...] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            ident = None
        if self._reference is None or ident is None or self._reference[0] != ident:
            ref = read_reference(path)
            if ref.problem and ident is None and self.options.reference_run is None:
                ref = replace(ref, problem=f"{ref.problem}: run the reference sweep first (its "
                              "output beside this run's), or pass --reference-run DIR")
            self._reference = (ident, ref)
        return self._reference[1]

    def _announce_prediction(self, cbs: Mapping[str, Any], ref: ReferenceRun | None,
                             ratio: float | None) -> None:
        """An event when the reference or the predicted b* changes: it is known from the start,
        long before a measurement, so the plain and JSON views should say it at once."""
        said = (ref.path if ref else None, ratio, ref.problem if ref else None,
                cbs.get("predicted"), cbs.get("predictedGrid"))
        if said == self._announced:
            return
        self._announced = said
        if ref is not None:
            self.log_event("reference", path=str(ref.path), noise_ratio=ref.noise_ratio,
                           generator_params=ref.generator_params,
                           dataset_size=ref.dataset_size, problem=ref.problem)
        if cbs.get("predicted") is not None:
            self.log_event("predicted", b_star=cbs["predicted"], grid=cbs.get("predictedGrid"),
                           noise_ratio=ratio if ratio is not None else
                           self.sweep.reference.noise_ratio if self.sweep.reference else None)

    def views(self) -> list[TrialView]:
        rows = []
        by_key = {(t.get("batchSize"), t.get("seed")): t for t in self.status.get("trials", [])}
        for key, st in sorted(self.trials.items()):
            if self.status and (key.batch_size, key.seed) not in by_key:
                continue  # a trial an adaptive sweep has not started
            t = by_key.get((key.batch_size, key.seed), {})
            m = st.metrics
            step = t.get("steps") if t.get("steps") is not None else (m.step if m else None)
            phase = t.get("phase", "Pending")
            eta = st.rate.eta(step, self.sweep.target.max_steps) \
                if step is not None and phase == "Running" else None
            rows.append(TrialView(
                batch_size=key.batch_size, seed=key.seed, phase=phase,
                step=step, max_steps=self.sweep.target.max_steps, fid=t.get("fid"),
                sfo=t.get("sfo"), eta_seconds=eta, restarts=st.restarts,
                source=t.get("source"), reason=t.get("reason")))
        return rows

    def run(self) -> dict[str, Any]:
        """Run to the end (or an interrupt); always stop every trial and Prometheus; write the
        status and the report. The output directory is locked meanwhile."""
        self.prepare()
        try:
            self._run()
        except OutputError as exc:
            raise OutputError(f"{exc}; trials stopped at their checkpoints: make room, then "
                              f"critbatch run --resume -o {self.out}") from None
        finally:
            self.unlock()
        return self.status

    def _run(self) -> None:
        threads = self.options.threads or thread_limit(self.sweep.parallelism)
        env = dict(os.environ, CRITBATCH_THREADS=str(threads))
        self.supervisor = Supervisor(env=env, threads=threads)
        previous = self._install_signals(self._interrupt)
        try:
            self._loop(threads)
            if self.hurried:
                self.log_event("killed", message="interrupted again: trials killed without "
                               "a checkpoint")
            self.finish()
        finally:
            self._install_signals(previous)

    def _loop(self, threads: int) -> None:
        """Step until done or interrupted; then stop every trial and the private Prometheus."""
        assert self.supervisor is not None
        try:
            self._show("start", self.sweep.name, str(self.out),
                       self.sweep.strategy.max_trials or len(self.trials))
            self.log_event("run", sweep=self.sweep.name, out=str(self.out), run_id=self.run_id,
                           threads=threads, metrics=self.options.metrics,
                           trainer=shlex.join(self.options.trainer_command))
            self.start_metrics()
            while self.step():
                if self.output_closed:
                    self.interrupt_cause = self.output_closed
                    raise KeyboardInterrupt
                time.sleep(self.options.poll_interval)
        except KeyboardInterrupt:
            self._install_signals(self._hurry)
            self.interrupted = True
            self.interrupt_cause = self.interrupt_cause or "Ctrl-C"
            self.log_event("interrupted", cause=self.interrupt_cause,
                           message="stopping trials; finished results are kept")
        finally:
            self._install_signals(self._hurry)
            try:
                self.supervisor.stop_all()
                self.reap_after_stop()
                if self.server is not None:
                    self.server.stop()
            finally:
                self._show("close")

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupt_cause = self.interrupt_cause or STOP_SIGNALS.get(signum, str(signum))
        raise KeyboardInterrupt

    def _hurry(self, signum: int, frame: Any) -> None:
        """Interrupted while stopping: kill the trials now (they lose the steps since their last
        checkpoint); one more interrupt ends the runner at once."""
        self.hurried = True
        if self.supervisor is not None:
            for proc in list(self.supervisor.processes.values()):
                proc.signal_group(signal.SIGKILL)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _install_signals(self, handler: Any) -> Any:
        """Set `handler` (a callable, or the dict this returns) for STOP_SIGNALS; returns
        the handlers it replaced. A signal ignored (`nohup`, a background job) stays ignored."""
        previous = {}
        for sig in STOP_SIGNALS:
            new = handler.get(sig) if isinstance(handler, dict) else handler
            if new is None or (callable(handler) and signal.getsignal(sig) == signal.SIG_IGN):
                continue
            try:
                previous[sig] = signal.signal(sig, new)
            except ValueError:  # not the main thread (a test calling run() from a worker)
                previous[sig] = signal.getsignal(sig)
        return previous

    def reap_after_stop(self) -> None:
        """Trials that finished while being stopped still count; the rest resume later."""
        for st in self.trials.values():
            if st.final is None and st.started:
                got = self._read_result(st)
                if got.result is not None:
                    st.final = self._final_from_result(st, got.result, None)
                elif got.problem is not None:
                    st.final = planner.Observation(
                        st.key, planner.Phase.Failed, steps=(st.metrics or TrialMetrics()).step,
                        source="local",
                        reason=f"refused result: {st.result_file.name}: {got.problem}",
                        restarts=st.restarts)

    def finish(self) -> None:
        """The last status (an interrupted run's says so in a warning) and the report."""
        self.status = self.plan().status
        if self.interrupted:
            self.status["warnings"] = [self.interrupted_warning(),
                                       *(self.status.get("warnings") or [])]
        self.write_status()
        report.render(self.resource(), self.out)

    def interrupted_warning(self) -> str:
        """`Interrupted (Ctrl-C): ...`: the status's warning, and the run's last line."""
        how = "killed without a checkpoint (interrupted again)" if self.hurried \
            else "stopped at their checkpoints"
        return (f"Interrupted ({self.interrupt_cause or 'Ctrl-C'}): unfinished trials {how}; "
                f"continue with critbatch run --resume -o {self.out}")

    def resource(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.manifest.items() if k != "status"}
        doc["status"] = self.status
        return doc
