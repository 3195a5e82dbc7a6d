"""`critbatch run`: a CriticalBatchSweep's trials as local trainer processes.

The loop is the operator's, with processes instead of Jobs: observe every trial (process exit,
result file, metrics), ask the shared planner what to start and stop, do it, write the status.
Finished trials are read from their result files, so `--resume` never reruns one. `LocalRun`
coordinates; the jobs it coordinates live beside it: the output directory (`rundir`), trial
processes (`supervise`), metrics (`trial_metrics`), results and an earlier status (`results`),
the reference run (`reference`) and the view (`progress`).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from critbatch import planner, report
from critbatch.clock import utc_now
from critbatch.errors import OutputError
from critbatch.launch import LAUNCHER_MODULE
from critbatch.local.launched import nodes_note
from critbatch.local.options import (
    MetricsMode,
    RunError,
    RunOptions,
    check_trainer,
    metrics_mode,
    trial_command,
)
from critbatch.local.processes import thread_limit
from critbatch.local.progress import GuardedProgress, Progress, TrialView
from critbatch.local.reference import ReferenceRun, ReferenceWatcher
from critbatch.local.results import read_status
from critbatch.local.rundir import RunDir, check_same_sweep, load_manifest
from critbatch.local.signals import STOP_SIGNALS, install_signals
from critbatch.local.supervise import TrialState, TrialSupervisor
from critbatch.local.trial_metrics import MetricsChannel
from critbatch.local.warm import WarmServers
from critbatch.planning.trials import row_value
from critbatch.spec import Sweep, parse_sweep


class LocalRun:
    """One `critbatch run`: owns the output directory, the trial processes and Prometheus."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        options: RunOptions,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
        warm_servers: WarmServers | None = None,
    ) -> None:
        """`warm_servers`: a campaign's, shared by its sweeps; None: the run starts its own."""
        self.manifest = dict(manifest)
        self.sweep: Sweep = parse_sweep(manifest)
        self.options = replace(options, metrics=MetricsMode(options.metrics))
        if self.options.metrics is MetricsMode.AUTO:
            self.options.metrics, self.options.prometheus_url = metrics_mode(self.sweep)
        self.view = GuardedProgress(progress or Progress())
        self.clock = clock
        self.out = Path(options.out_dir)
        self.dir = RunDir(self.out)
        self.run_id = secrets.token_hex(4)
        self.trials = {key: TrialState(key, self.dir.trial_dir(key))
                       for key in self.sweep.trials()}
        self.status: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.metrics = MetricsChannel(self.sweep, self.options, out=self.out, run_id=self.run_id)
        self.supervisor = TrialSupervisor(
            self.sweep, self.trials, command=trial_command(self.sweep, self.options),
            linger=self.metrics.linger(), source=self.metrics.source, log=self.log_event,
            warn=self._warn_once, workdir=self.options.workdir,
            warm_log=self.out / "warm.log" if self.options.warm else None,
            warm_servers=warm_servers)
        self.reference = ReferenceWatcher(self.sweep, self.options, self.dir.status_file)
        self.interrupted = False
        self.interrupt_cause: str | None = None  # Ctrl-C, SIGTERM, SIGHUP, output closed (...)
        self.hurried = False  # interrupted again while stopping: trials were killed
        self._started = clock()
        self._last_metrics = -math.inf
        self._announced: tuple | None = None  # the reference and prediction last logged

    @property
    def output_closed(self) -> str | None:
        """Why the progress view can no longer write (the run then stops), or None."""
        return self.view.closed

    # -- output directory ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Create or reopen the output directory and lock it; on --resume load what finished
        before. Every problem is a RunError naming the option or file, raised before any
        trial starts."""
        if self.options.retry_failed and not self.options.resume:
            raise RunError("--retry-failed: only with --resume (it restarts the failed trials "
                           "of an earlier run)")
        self.metrics.check_binary()  # before the output directory exists
        if self.sweep.trainer.custom:
            check_trainer(self.supervisor.command, what="spec.trainer.command[0]",
                          cwd=self.options.workdir)
        else:
            check_trainer(self.supervisor.command)
        self.metrics.check_sd_file()
        self.dir.create()
        warning = self.dir.lock()
        if warning:
            self.warnings.append(warning)
        try:
            self._reopen()
        except BaseException:
            self.unlock()
            raise

    def unlock(self) -> None:
        self.dir.unlock()

    def _reopen(self) -> None:
        saved = self.dir.manifest_file
        if saved.exists() and not self.options.resume:
            raise RunError(f"--out: {self.out} already holds a run: pass --resume to continue "
                           "it, or choose another directory")
        if self.options.resume and saved.exists():
            check_same_sweep(load_manifest(saved), self.sweep, self.out)
            self.status = read_status(self.dir.status_file)
            if self.options.retry_failed:
                self._forget_failed()
            self._load_finished()
        self.dir.write_manifest(self.manifest, self.status)

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
        """Each trial's result file, else what the earlier status said of a pruned one."""
        by_key = {(t.get("batchSize"), t.get("seed")): t for t in self.status.get("trials", [])}
        for key, st in self.trials.items():
            old = by_key.get((key.batch_size, key.seed), {})
            got = self.supervisor.read_result(st)
            if got.result is not None:
                st.final = self.supervisor.final_from_result(st, got.result,
                                                             old.get("source") or "local")
            elif got.problem is not None and not self.options.retry_failed:
                st.final = planner.Observation(
                    key, planner.Phase.Failed, steps=old.get("steps"), source="local",
                    reason=f"refused result: {st.result_file.name}: {got.problem}",
                    restarts=old.get("restarts") or 0)
            elif old.get("phase") == planner.Phase.Pruned.value:
                st.final = planner.Observation(
                    key, planner.Phase.Pruned, steps=old.get("steps"), value=row_value(old),
                    source=old.get("source") or "local", reason=old.get("reason"),
                    restarts=old.get("restarts") or 0)
            if st.final is not None:
                st.restarts = st.final.restarts
                self.view.event("resumed", batch_size=key.batch_size, seed=key.seed,
                                phase=st.final.phase.value)

    def write_status(self) -> None:
        self.dir.write_status(self.manifest, self.status)

    def log_event(self, kind: str, **fields: Any) -> None:
        self.dir.append_event({"time": utc_now(), "event": kind, **fields})
        self.view.event(kind, **fields)

    def _warn_once(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            self.log_event("warning", message=text)

    # -- the loop -----------------------------------------------------------------------------

    def read_metrics(self) -> None:
        """Update each running trial's metrics from its endpoint or from Prometheus."""
        running = self.supervisor.running()
        seen = self.metrics.read({st.key: st.port for st in running})
        for key, m in seen.items():
            self.trials[key].note_metrics(m, self.clock())

    def publish_targets(self) -> None:
        self.metrics.publish({st.key.name: st.port for st in self.supervisor.running()})

    def step(self) -> bool:
        """One round: reap, read metrics, plan, act, write. False once nothing is left to do."""
        self.supervisor.enforce_deadline()
        self.supervisor.reap()
        now = self.clock()
        if now - self._last_metrics >= self.options.scrape_interval or self.supervisor.ending():
            self._last_metrics = now
            self.read_metrics()
        self.supervisor.stop_confirmed()
        result = self.plan()
        # The planner's order: write the status first, then stop, then start.
        self.status = result.status
        self.write_status()
        for key, reason in result.stop:
            self.supervisor.request_stop(key, reason)
        # Locally every trial is a process of its own, a pod's trials too.
        for key in (k for group in result.create for k in group):
            st = self.trials[key]
            if st.final is None and key.name not in self.supervisor.processes:
                self.supervisor.start(st)
        self.publish_targets()
        self.view.update(self.status, self.views(), self.clock() - self._started)
        return bool(self.supervisor.processes) or bool(result.create)

    def plan(self) -> planner.Plan:
        """The shared planner on what this run sees; the runner's own warnings added."""
        problems = [("MetricsUnavailable", self.metrics.problem)] if self.metrics.problem else []
        ref = self.reference.current()
        reference = planner.ReferenceStatus(self.options.reference_noise_ratio, None, None)
        if reference.noise_ratio is None and ref is not None:
            reference = ref.values
        ratio = reference.noise_ratio
        result = planner.plan(self.sweep, self.supervisor.observations(), reference=reference,
                              previous_status=self.status or None, problems=problems)
        status = dict(result.status)
        extra = list(self.warnings)
        if ref is not None and ref.problem:
            extra.append(ref.problem)  # where it looked: the planner's warning has the name only
        self._announce_prediction(status.get("criticalBatchSize") or {}, ref, ratio)
        status["warnings"] = list(status.get("warnings") or []) + [
            w for w in extra if w not in (status.get("warnings") or [])]
        status["conditions"] = planner.merge_conditions(
            self.status.get("conditions"), status.get("conditions") or [], utc_now())
        return replace(result, status=status)

    def _announce_prediction(self, cbs: Mapping[str, Any], ref: ReferenceRun | None,
                             ratio: float | None) -> None:
        """An event when the reference or the predicted b* changes: it is known from the start,
        long before a measurement, so the plain and JSON views should say it at once."""
        said = (ref.path if ref else None, ratio, ref.problem if ref else None,
                cbs.get("predicted"), cbs.get("predictedGrid"), cbs.get("predictedInterval"))
        if said == self._announced:
            return
        self._announced = said
        if ref is not None:
            self.log_event("reference", path=str(ref.path), noise_ratio=ref.values.noise_ratio,
                           generator_params=ref.values.params,
                           dataset_size=ref.values.dataset_size, problem=ref.problem)
        if cbs.get("predicted") is not None:
            self.log_event("predicted", b_star=cbs["predicted"], grid=cbs.get("predictedGrid"),
                           interval=cbs.get("predictedInterval"),
                           noise_ratio=ratio if ratio is not None else
                           self.sweep.reference.noise_ratio if self.sweep.reference else None)

    def views(self) -> list[TrialView]:
        """The progress rows, in trial order; an adaptive sweep's unstarted trials left out."""
        by_key = {(t.get("batchSize"), t.get("seed")): t for t in self.status.get("trials", [])}
        rows = []
        for key, st in sorted(self.trials.items()):
            if self.status and (key.batch_size, key.seed) not in by_key:
                continue
            rows.append(st.view(by_key.get((key.batch_size, key.seed), {}),
                                self.sweep.target.max_steps))
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
        self.supervisor.begin(threads)
        report.warm_up()
        previous = install_signals(self._interrupt)
        try:
            self._loop(threads)
            if self.hurried:
                self.log_event("killed", message="interrupted again: trials killed without "
                               "a checkpoint")
            self.finish()
        finally:
            install_signals(previous)

    def _loop(self, threads: int) -> None:
        """Step until done or interrupted; then stop every trial and the private Prometheus."""
        try:
            self.view.start(self.sweep.name, str(self.out),
                            self.sweep.strategy.max_trials or len(self.trials))
            workers = self.supervisor.workers
            self.log_event("run", sweep=self.sweep.name, out=str(self.out), run_id=self.run_id,
                           threads=threads, metrics=self.options.metrics,
                           trainer=shlex.join(self.supervisor.command),
                           **({"workers": workers, "launcher": LAUNCHER_MODULE}
                              if workers > 1 else {}))
            if note := nodes_note(self.sweep):
                self._warn_once(note)
            server = self.metrics.start()
            if server is not None:
                self.log_event("prometheus", **server)
            while self.step():
                if self.output_closed:
                    self.interrupt_cause = self.output_closed
                    raise KeyboardInterrupt
                self.supervisor.wait(self.options.poll_interval)
        except KeyboardInterrupt:
            install_signals(self._hurry)
            self.interrupted = True
            self.interrupt_cause = self.interrupt_cause or "Ctrl-C"
            self.log_event("interrupted", cause=self.interrupt_cause,
                           message="stopping trials; finished results are kept")
        finally:
            install_signals(self._hurry)
            try:
                self.supervisor.stop_all()
                self.metrics.stop()
            finally:
                self.view.close()

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupt_cause = self.interrupt_cause or STOP_SIGNALS.get(signum, str(signum))
        raise KeyboardInterrupt

    def _hurry(self, signum: int, frame: Any) -> None:
        """Interrupted while stopping: kill the trials now (they lose the steps since their last
        checkpoint); one more interrupt ends the runner at once."""
        self.hurried = True
        self.supervisor.kill_all()
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.default_int_handler)

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

