"""`critbatch run DIR/`: a campaign's sweeps run one after another on this machine.

A campaign is the CriticalBatchSweeps of a directory (or of several manifests), which may share
the label `critbatch.dev/campaign: NAME`. Each sweep runs with `LocalRun` into `OUT/<sweep>/`,
so a sweep naming another in `spec.reference.sweep` reads that sibling's run, and references
run first (`campaign_order`). At the end, after a failed sweep or an interrupt too, the
campaign report (`OUT/campaign.md`, `.png`, `.svg`) sets the sweeps side by side.

    OUT/run.lock           flock-ed while the campaign runs
    OUT/events.jsonl       the campaign's own events: each sweep started, ended or kept
    OUT/<sweep>/           each sweep's run directory (see rundir)
    OUT/campaign.md/.png/.svg
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from critbatch.campaign import CAMPAIGN_LABEL, CampaignError, campaign_name, campaign_order
from critbatch.campaign_report import MARKDOWN_NAME, write_campaign_report
from critbatch.clock import utc_now
from critbatch.errors import InputError
from critbatch.files import check_values, load_yaml_all, read_text
from critbatch.local.options import RunError, RunOptions, check_trainer
from critbatch.local.progress import Progress, failure_reason, headline
from critbatch.local.results import read_status
from critbatch.local.rundir import RunDir, check_same_sweep, load_manifest
from critbatch.local.runner import LocalRun
from critbatch.local.signals import STOP_SIGNALS, install_signals
from critbatch.local.warm import WarmServers
from critbatch.planning.trials import FINAL
from critbatch.spec import KIND, parse_sweep

YAML_SUFFIXES = (".yaml", ".yml")
# Files of a directory that are never sweeps: kustomize's own, and hidden (editor) files.
NOT_SWEEPS = ("kustomization.yaml", "kustomization.yml")
# A campaign's name becomes OUT's last path component: a Kubernetes label value, never `..`.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
FINISHED_PHASES = ("Succeeded", "Failed")

Notify = Callable[..., None]  # notify(kind, **fields): the campaign's events, for the view


@dataclass(frozen=True)
class SweepFile:
    """One sweep of a campaign and where it was written: its file, and which document."""

    manifest: dict[str, Any]
    path: Path
    document: int = 0
    documents: int = 1

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def where(self) -> str:
        """How an error names this sweep: the file, and the document when it holds several."""
        if self.documents > 1:
            return f"{self.path} (document {self.document + 1})"
        return str(self.path)


@dataclass(frozen=True)
class Campaign:
    """The sweeps to run, references first, and the files that held no sweep."""

    name: str
    sweeps: tuple[SweepFile, ...]
    skipped: tuple[Path, ...] = ()


def load_documents(path: Path, label: str = "SWEEP", *, regular: bool = False) -> list[Any]:
    """Every YAML document of a file (`---` between them), bounded like `load_yaml`."""
    return load_yaml_all(read_text(path, label, regular=regular), f"{label}: {path}",
                         finite=False)


def is_plain_sweep_file(paths: Sequence[Path]) -> bool:
    """One file of at most one YAML document: today's `critbatch run SWEEP.yaml`, whose own
    errors (an empty file, a list, bad YAML) are then reported as they always were."""
    if len(paths) != 1 or Path(paths[0]).is_dir():
        return False
    if not Path(paths[0]).is_file():  # missing, or a pipe that can be read only once
        return True
    try:
        return len(load_documents(Path(paths[0]))) <= 1
    except InputError:
        return True


def holds_campaign_run(out: Path, names: Sequence[str] | None = None) -> bool:
    """Whether OUT already holds (part of) a campaign's run: the campaign report, or the run
    directory of a sweep (of one of `names`; a reference from elsewhere may be put beside)."""
    if (out / MARKDOWN_NAME).exists():
        return True
    if names is not None:
        return any((out / name / "sweep.yaml").is_file() for name in names)
    try:
        return any((d / "sweep.yaml").is_file() for d in out.iterdir() if d.is_dir())
    except OSError:
        return False


def _directory_files(directory: Path) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise RunError(f"SWEEP: cannot list {directory}: {exc.strerror or exc}") from None
    return [p for p in entries if p.suffix in YAML_SUFFIXES and not p.name.startswith(".")
            and p.name.lower() not in NOT_SWEEPS and not p.is_dir()]


def _sweeps_of(path: Path, *, listed: bool = False) -> list[SweepFile]:
    """The CriticalBatchSweep documents of one file, each checked like `load_manifest` does;
    documents of other kinds are not sweeps and are left out. A file `listed` from a
    directory must be a regular file (a pipe there would block the run)."""
    docs = load_documents(path, regular=listed)
    found = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        sweep = SweepFile(doc, path, i, len(docs))
        try:
            check_values({k: v for k, v in doc.items() if k != "status"}, "", fields="")
            parse_sweep(doc)
        except InputError as exc:
            raise RunError(f"{sweep.where}: {exc}") from None
        found.append(sweep)
    return found


def _name_of(paths: Sequence[Path], sweeps: Sequence[SweepFile], out: Path | None) -> str:
    """The label the sweeps share, else the name of the one directory they come from, else
    OUT's name."""
    label = campaign_name([s.manifest for s in sweeps])
    if label is not None:
        if not _LABEL_VALUE.match(label):
            raise CampaignError(f"metadata.labels.{CAMPAIGN_LABEL}: must be a label value "
                                f"(letters, digits, '-', '_', '.'; alphanumeric at both ends), "
                                f"got {label!r}")
        return label
    dirs = {(p if p.is_dir() else p.parent).resolve() for p in map(Path, paths)}
    if len(dirs) == 1 and (name := next(iter(dirs)).name):
        return name
    if out is not None and Path(out).resolve().name:
        return Path(out).resolve().name
    raise CampaignError(f"metadata.labels.{CAMPAIGN_LABEL}: the sweeps come from several "
                        "directories and none names its campaign: label them "
                        f"{CAMPAIGN_LABEL}: NAME, or pass -o OUT")


def load_campaign(paths: Sequence[Path], out: Path | None = None) -> Campaign:
    """The campaign of these files and directories (each directory's *.yaml and *.yml, not
    recursively), in the order it runs; a one-line InputError naming the file and the field,
    before anything is written."""
    sweeps: list[SweepFile] = []
    skipped: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for f in _directory_files(path):
                got = _sweeps_of(f, listed=True)
                sweeps += got
                if not got:
                    skipped.append(f)
            if not any(s.path.parent == path for s in sweeps):
                raise RunError(f"SWEEP: {path} holds no CriticalBatchSweep (in its own *.yaml "
                               f"and *.yml files, not its subdirectories'; {NOT_SWEEPS[0]} "
                               "and other kinds are skipped)")
        else:
            got = _sweeps_of(path)
            if not got:
                raise RunError(f"SWEEP: {path}: holds no CriticalBatchSweep (kind: {KIND})")
            sweeps += got
    seen: dict[str, SweepFile] = {}
    for s in sweeps:
        if s.name in seen:
            raise CampaignError(f"{s.where}: metadata.name: {s.name!r} is given twice (also in "
                                f"{seen[s.name].where}): a campaign's sweeps need their own "
                                "names")
        seen[s.name] = s
    where = " ".join(map(str, paths))
    try:
        name = _name_of(paths, sweeps, out)
        ordered = campaign_order([s.manifest for s in sweeps])
    except CampaignError as exc:
        raise CampaignError(f"{where}: {exc}") from None
    return Campaign(name, tuple(seen[m["metadata"]["name"]] for m in ordered), tuple(skipped))


def finished_status(out: Path, manifest: Mapping[str, Any], *,
                    retry_failed: bool = False) -> dict[str, Any] | None:
    """The status of a run in `out` that is over and need not run again: the same spec, phase
    Succeeded or Failed, every trial final (with `retry_failed`, none Failed). None when it
    should run: never started, interrupted, or its spec changed (new batch sizes or seeds)."""
    saved = out / "sweep.yaml"
    if not saved.is_file() or load_manifest(saved).get("spec") != manifest.get("spec"):
        return None
    status = read_status(out / "status.yaml")
    trials = status.get("trials") or []
    if status.get("phase") not in FINISHED_PHASES or any(t.get("phase") not in FINAL
                                                         for t in trials):
        return None
    if retry_failed and any(t.get("phase") == "Failed" for t in trials):
        return None
    return status


def resource(manifest: Mapping[str, Any], status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest with this status, as `kubectl get -o yaml` shows a sweep (no status when
    it never started)."""
    doc = {k: v for k, v in manifest.items() if k != "status"}
    if status:
        doc["status"] = dict(status)
    return doc


class CampaignRun:
    """Runs a campaign's sweeps in order into OUT/<sweep>/ and writes the campaign report.

    `options` are every sweep's (OUT is its out_dir); each sweep's trainer command runs in the
    directory of its file. `progress(name)` makes each sweep's view; `notify(kind, **fields)`
    hears the campaign's own events (`campaign`, `sweep-start`, `sweep-kept`, `sweep-done`).
    """

    def __init__(self, campaign: Campaign, options: RunOptions,
                 progress: Callable[[str], Progress] | None = None,
                 notify: Notify | None = None) -> None:
        self.campaign = campaign
        self.options = options
        self.out = Path(options.out_dir)
        self.progress = progress or (lambda name: Progress())
        self.notify = notify or (lambda kind, **fields: None)
        self.dir = RunDir(self.out)
        self.statuses: dict[str, dict[str, Any]] = {}
        self.report_files: list[Path] = []
        self.interrupted = False
        self.interrupt_cause: str | None = None
        self.interrupted_sweep: str | None = None
        self.interrupted_warning: str | None = None
        self.output_closed: str | None = None
        self.warm_servers = WarmServers(self.out / "warm.log")

    def sweep_options(self, sweep: SweepFile) -> RunOptions:
        return replace(self.options, out_dir=self.out / sweep.name,
                       workdir=sweep.path.resolve().parent)

    def check(self) -> None:
        """Everything that would stop a sweep from starting, for every sweep, before the first
        one runs: its options, its trainer, a run in OUT to refuse or resume."""
        if (self.out / "sweep.yaml").exists():
            raise RunError(f"--out: {self.out} holds the run of one sweep, not a campaign: "
                           "choose another directory")
        names = [s.name for s in self.campaign.sweeps]
        if not self.options.resume and holds_campaign_run(self.out, names):
            raise RunError(f"--out: {self.out} already holds a campaign run: pass --resume to "
                           "continue it, or choose another directory")
        for sweep in self.campaign.sweeps:
            try:
                self._check_sweep(sweep)
            except InputError as exc:
                raise RunError(f"{sweep.where}: {exc}") from None

    def _check_sweep(self, sweep: SweepFile) -> None:
        opts = self.sweep_options(sweep)
        runner = LocalRun(sweep.manifest, opts)  # refuses options this sweep cannot take
        runner.metrics.check_binary()
        if runner.sweep.trainer.custom:
            check_trainer(runner.supervisor.command, what="spec.trainer.command[0]",
                          cwd=opts.workdir)
        else:
            check_trainer(runner.supervisor.command)
        saved = opts.out_dir / "sweep.yaml"
        if self.options.resume and saved.is_file():
            check_same_sweep(load_manifest(saved), runner.sweep, opts.out_dir)
            read_status(opts.out_dir / "status.yaml")

    def resources(self) -> list[dict[str, Any]]:
        """Every sweep's manifest with its status so far, in campaign order."""
        return [resource(s.manifest, self.statuses.get(s.name)) for s in self.campaign.sweeps]

    def run(self) -> list[dict[str, Any]]:
        """Each sweep in turn (with --resume, a finished one is kept, not rerun); a failed
        sweep does not stop the campaign, an interrupt does. Then the report. The sweeps'
        resources (manifest and status), in campaign order."""
        self.check()
        self.dir.create()
        warning = self.dir.lock()
        try:
            if warning:
                self._event("warning", message=warning)
            previous = install_signals(self._interrupt)
            try:
                self._run_all()
            finally:
                install_signals(previous)
                self.warm_servers.close()
            self._write_report()
        finally:
            self.dir.unlock()
        return self.resources()

    def _run_all(self) -> None:
        sweeps = self.campaign.sweeps
        self._event("campaign", campaign=self.campaign.name, out=str(self.out),
                    sweeps=[s.name for s in sweeps],
                    skipped=[str(p) for p in self.campaign.skipped])
        try:
            for index, sweep in enumerate(sweeps, 1):
                self._run_one(sweep, index, len(sweeps))
                if self.interrupted or self.output_closed:
                    return
        except KeyboardInterrupt:  # between two sweeps' own handling of it
            self.interrupted = True
            self.interrupt_cause = self.interrupt_cause or "Ctrl-C"

    def _run_one(self, sweep: SweepFile, index: int, total: int) -> None:
        opts = self.sweep_options(sweep)
        at = {"sweep": sweep.name, "index": index, "of": total, "out": str(opts.out_dir)}
        kept = finished_status(opts.out_dir, sweep.manifest,
                               retry_failed=opts.retry_failed) if opts.resume else None
        if kept is not None:
            self.statuses[sweep.name] = kept
            self._event("sweep-kept", **at, phase=kept.get("phase"))
            return
        self._event("sweep-start", **at)
        if self.output_closed:
            return
        runner = LocalRun(sweep.manifest, opts, self.progress(sweep.name),
                          warm_servers=self.warm_servers)
        try:
            runner.run()
        except KeyboardInterrupt:  # while preparing or reporting, outside the sweep's loop
            runner.interrupted = True
            runner.interrupt_cause = runner.interrupt_cause or self.interrupt_cause or "Ctrl-C"
        self.statuses[sweep.name] = runner.status
        self.output_closed = self.output_closed or runner.output_closed
        if runner.interrupted:
            self.interrupted = True
            self.interrupt_cause = runner.interrupt_cause
            self.interrupted_sweep = sweep.name
            self.interrupted_warning = runner.interrupted_warning()
        status = runner.status
        self._event("sweep-done", **at, phase=status.get("phase"), headline=headline(status),
                    reason=self.interrupted_warning if runner.interrupted
                    else failure_reason(status))

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupt_cause = self.interrupt_cause or STOP_SIGNALS.get(signum, str(signum))
        raise KeyboardInterrupt

    def _event(self, kind: str, **fields: Any) -> None:
        """Logged in OUT/events.jsonl and told to the view; a view whose output is gone goes
        quiet, and the campaign stops as if interrupted."""
        self.dir.append_event({"time": utc_now(), "event": kind, **fields})
        if self.output_closed:
            return
        try:
            self.notify(kind, **fields)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.output_closed = f"output closed: {(exc.strerror or 'broken pipe').lower()}"

    def _write_report(self) -> None:
        self.report_files = list(write_campaign_report(self.out, self.campaign.name,
                                                       self.resources()))
