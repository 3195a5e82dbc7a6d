"""The sweep's trials as processes: start them, restart a killed one from its checkpoint (up to
spec.trainer.backoffLimit times, as a Job would), reap and stop them, and say what each left.

`processes.py` runs and signals any process; this module knows trials: their directories,
results and metrics, and turns an ended process into the planner's observation.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from critbatch import planner, protocol
from critbatch.errors import OutputError
from critbatch.local import prometheus as prom
from critbatch.local.launched import failed_worker, launched, workers
from critbatch.local.options import RunError, trial_path
from critbatch.local.processes import ExitKind, Supervisor, TrialProcess, classify, log_tail
from critbatch.local.progress import RateMeter, TrialView
from critbatch.local.results import ResultRead, read_result, result_from_log
from critbatch.local.warm import WarmServers, WarmStarts, can_start_warm
from critbatch.metrics import TrialMetrics
from critbatch.planning.trials import row_value
from critbatch.protocol import result_value
from critbatch.spec import Sweep, resume_checkpoint_every
from critbatch.trainer_args import trainer_args, trial_env
from critbatch.vocabulary import TrialKey

EventLog = Callable[..., None]  # log(kind, **fields): the run's events.jsonl and its view
PORT_RETRIES = 5  # new ports for a trial whose port another process took, before it counts


def _lost_its_port(last_line: str) -> bool:
    """Whether a trainer's bad-configuration exit was its metrics port being taken: the
    built-in trainer names `metrics-port:`, the protocol's helper `CRITBATCH_METRICS_PORT:`."""
    return "metrics-port:" in last_line or f"{protocol.METRICS_PORT}: cannot listen" in last_line


@dataclass
class TrialState:
    """What the runner knows about one trial beyond its process."""

    key: TrialKey
    dir: Path
    port: int | None = None
    restarts: int = 0
    ports_lost: int = 0
    stop_reason: str | None = None
    final: planner.Observation | None = None
    metrics: TrialMetrics | None = None
    rate: RateMeter = field(default_factory=RateMeter)
    started: bool = False
    first_start: float | None = None  # monotonic: spec.trainer.activeDeadlineSeconds counts
    deadline_hit: bool = False

    @property
    def result_file(self) -> Path:
        return self.dir / "result.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "trainer.log"

    def note_metrics(self, m: TrialMetrics, now: float) -> None:
        self.metrics = m
        if m.step is not None:
            self.rate.add(m.step, now)

    def view(self, row: Mapping[str, Any], max_steps: int) -> TrialView:
        """The progress row: the status row's values, the last metrics where it has none."""
        m = self.metrics
        step = row.get("steps") if row.get("steps") is not None else (m.step if m else None)
        phase = row.get("phase", "Pending")
        eta = self.rate.eta(step, max_steps) if step is not None and phase == "Running" else None
        return TrialView(
            batch_size=self.key.batch_size, seed=self.key.seed, phase=phase,
            step=step, max_steps=max_steps, value=row_value(row),
            sfo=row.get("sfo"), eta_seconds=eta, restarts=self.restarts,
            source=row.get("source"), reason=row.get("reason"))


class TrialSupervisor:
    """Starts, reaps and stops the trials' processes; each trial's process is named
    `TrialKey.name`. `log` records what happened, `warn` adds a run warning once."""

    def __init__(self, sweep: Sweep, trials: Mapping[TrialKey, TrialState], *,
                 command: Sequence[str], linger: float, source: str, log: EventLog,
                 warn: Callable[[str], None], workdir: Path | None = None,
                 warm_log: Path | None = None, warm_servers: WarmServers | None = None
                 ) -> None:
        """`warm_log`: fork the built-in trainer's trials from a warm server logging there
        (critbatch.local.warm), or from one of `warm_servers` (a campaign's); None: every
        trial in a fresh interpreter."""
        self.sweep = sweep
        self.trials = trials
        self.by_name = {key.name: st for key, st in trials.items()}
        self.command = list(command)
        self.workdir = workdir  # where a custom command runs (the manifest's directory)
        self.linger = linger
        self.source = source  # where metrics come from: a confirmed value's status source
        self.log = log
        self.warn = warn
        self.workers = workers(sweep)  # > 1: each trial runs under the launcher
        self._procs: Supervisor | None = None
        self._ports: set[int] = set()
        self._threads = 1
        self._warm_log = warm_log if can_start_warm(
            command, custom=sweep.trainer.custom, workers=self.workers) else None
        self._warm_servers = warm_servers
        self._warm: WarmStarts | None = None

    def begin(self, threads: int) -> None:
        """Ready to start trials, each with `threads` CPU threads (a data-parallel trial's
        workers share them: CRITBATCH_THREADS is the trial's, the trainer divides it)."""
        env = dict(os.environ, CRITBATCH_THREADS=str(threads), PATH=trial_path())
        self._procs = Supervisor(env=env, threads=threads)
        self._threads = threads
        if self._warm_log is not None:
            self._warm = WarmStarts(self.command, self._warm_log, self._procs.env,
                                    reproducible=self.sweep.trainer.reproducible_cpu,
                                    log=self.log, warn=self.warn, shared=self._warm_servers)

    @property
    def processes(self) -> Mapping[str, TrialProcess]:
        """The trials' processes still running, by trial name."""
        return self._procs.processes if self._procs is not None else {}

    def running(self) -> list[TrialState]:
        return [self.by_name[name] for name in self.processes]

    def ending(self) -> bool:
        """Whether a running trial has written its result while this run has not yet read its
        final metrics: it lingers for them, so they are worth reading now."""
        for name, proc in self.processes.items():
            st = self.by_name[name]
            if not proc.stop_requested and not (st.metrics and st.metrics.finished) and \
                    st.result_file.exists():
                return True
        return False

    def wait(self, timeout: float) -> None:
        """Sleep up to `timeout` s; less once a trial's process ends or a running trial writes
        its result, so the runner reaps it, or reads its final metrics, at once."""
        deadline = time.monotonic() + timeout
        writing = [st for st in self.running() if not st.result_file.exists()]
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            if any(p.poll() is not None for p in self.processes.values()) or \
                    any(st.result_file.exists() for st in writing):
                return

    def read_result(self, st: TrialState) -> ResultRead:
        return read_result(st.result_file, st.key, sweep=self.sweep.name,
                           max_steps=self.sweep.target.max_steps)

    def final_from_result(self, st: TrialState, result: dict[str, Any],
                          source: str | None) -> planner.Observation:
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
                    source = self.source
                else:
                    self.warn(
                        f"trial b={st.key.batch_size} seed={st.key.seed}: metrics say N = "
                        f"{seen}, the result file says {result['steps']}: using the result file")
        phase = planner.Phase.Reached if result["reached"] else planner.Phase.Censored
        return planner.Observation(st.key, phase, steps=result["steps"], value=result_value(result),
                                   result=result, source=source, restarts=st.restarts)

    def observations(self) -> dict[TrialKey, planner.Observation]:
        """What the planner sees: final trials, and running ones at their last metrics."""
        out = {}
        running = set(self.processes)
        for key, st in self.trials.items():
            if st.final is not None:
                out[key] = replace(st.final, restarts=st.restarts)
            elif key.name in running:
                m = st.metrics or TrialMetrics()
                out[key] = planner.Observation(
                    key, planner.Phase.Running, steps=m.step, value=m.value,
                    source=self.source if st.metrics else None, restarts=st.restarts)
        return out

    def _new_port(self) -> int:
        """A free loopback port not handed to another trial of this run."""
        for _ in range(100):
            port = prom.free_port()
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no free loopback port")

    def start(self, st: TrialState) -> None:
        """Start (or restart, from its checkpoint) one trial's trainer."""
        assert self._procs is not None
        try:
            st.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{st.dir}: cannot create: {exc.strerror or exc}") from None
        st.port = self._new_port()
        st.metrics = None
        with contextlib.suppress(FileNotFoundError):
            st.result_file.unlink()  # a stale result must not stand for this attempt
        checkpoint = st.dir / "checkpoint"
        env = trial_env(self.sweep, st.key, metrics_port=st.port,
                        result_file=str(st.result_file.resolve()),
                        checkpoint_dir=str(checkpoint.resolve()), metrics_host="127.0.0.1")
        if self.sweep.trainer.custom:
            argv, cwd = list(self.sweep.trainer.command), self.workdir
            try:
                checkpoint.mkdir(exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{checkpoint}: cannot create: {exc.strerror or exc}") from None
        else:
            args, cwd = self._builtin_args(st), None
            warm = self._warm.trial_argv(args) if self._warm is not None else None
            argv = warm or [*self.command, *args]
        how = launched(argv, workers=self.workers, threads=self._threads)
        try:
            proc = self._procs.start(st.key.name, how.argv, st.log_file, env={**env, **how.env},
                                     cwd=cwd, death_signal=how.death_signal)
        except OSError as exc:  # check_trainer passed, yet it cannot run (a bad interpreter)
            what = "spec.trainer.command" if self.sweep.trainer.custom else "--trainer"
            raise RunError(f"{what}: cannot start {argv[0]}: {exc.strerror or exc}") from None
        if st.first_start is None:
            st.first_start = time.monotonic()
        st.started = True
        more = {"workers": self.workers} if self.workers > 1 else {}
        self.log("restart" if st.restarts else "start", batch_size=st.key.batch_size,
                 seed=st.key.seed, pid=proc.pid, port=st.port, restarts=st.restarts, **more)

    def _builtin_args(self, st: TrialState) -> list[str]:
        """The built-in trainer's flags (they win over the protocol's variables)."""
        args = trainer_args(self.sweep, st.key, metrics_port=st.port or 0,
                            checkpoint_dir=str((st.dir / "checkpoint").resolve()),
                            termination_log=str(st.result_file.resolve()),
                            linger=math.ceil(self.linger))
        if not self.sweep.trainer.checkpoint_every:
            # Locally a kill -9 should cost little: checkpoint at every evaluation.
            args += ["--checkpoint-every", str(resume_checkpoint_every(self.sweep))]
        return [*args, "--metrics-host", "127.0.0.1"]

    def enforce_deadline(self) -> None:
        """Stop trials running longer than spec.trainer.activeDeadlineSeconds (counted from
        their first start, as a Job counts it): a trainer that never reports fails."""
        limit = self.sweep.trainer.active_deadline_seconds
        if not limit:
            return
        now = time.monotonic()
        for name in list(self.processes):
            st = self.by_name[name]
            if not st.deadline_hit and st.first_start is not None and \
                    now - st.first_start > limit:
                st.deadline_hit = True
                self.log("stopping", batch_size=st.key.batch_size, seed=st.key.seed,
                         reason=f"past spec.trainer.activeDeadlineSeconds ({limit} s)")
                assert self._procs is not None
                self._procs.request_stop(name)

    def request_stop(self, key: TrialKey, reason: str) -> None:
        """Stop a running trial for the planner's `reason` (it is then Pruned when reaped)."""
        st = self.trials[key]
        if st.stop_reason is None and key.name in self.processes:
            assert self._procs is not None
            st.stop_reason = reason
            self.log("stopping", batch_size=key.batch_size, seed=key.seed, reason=reason)
            self._procs.request_stop(key.name)

    def stop_confirmed(self) -> None:
        """End a lingering trainer once its final metrics were read and its result is written.

        The linger exists so a scrape sees the final values; once this run has seen them there
        is nothing left to wait for.
        """
        for name, proc in list(self.processes.items()):
            st = self.by_name[name]
            if st.metrics is not None and st.metrics.finished and \
                    self.read_result(st).result is not None and not proc.stop_requested:
                assert self._procs is not None
                self._procs.request_stop(name)

    def stop_all(self) -> None:
        """Stop every trial at its checkpoint; those that finished meanwhile still count."""
        if self._procs is not None:
            self._procs.stop_all()
        if self._warm is not None:
            self._warm.stop()
        self.reap_after_stop()

    def kill_all(self) -> None:
        """Kill every trial now: they lose the steps since their last checkpoint."""
        for proc in list(self.processes.values()):
            proc.kill()
        if self._warm is not None:
            self._warm.stop()

    def reap_after_stop(self) -> None:
        """Trials that finished while being stopped still count; the rest resume later."""
        for st in self.trials.values():
            if st.final is None and st.started:
                got = self.read_result(st)
                if got.result is not None:
                    st.final = self.final_from_result(st, got.result, None)
                elif got.problem is not None:
                    st.final = self._failed(
                        st, f"refused result: {st.result_file.name}: {got.problem}")

    def _failed(self, st: TrialState, reason: str) -> planner.Observation:
        return planner.Observation(
            st.key, planner.Phase.Failed, steps=(st.metrics or TrialMetrics()).step,
            source="local", reason=reason, restarts=st.restarts)

    def _ended_result(self, st: TrialState, kind: ExitKind) -> ResultRead:
        """The result an ended trainer left: its file, else (after a clean exit) the last line
        of its log; a problem names where it was read."""
        got = self.read_result(st)
        if got.result is None and got.problem is None and kind is ExitKind.FINISHED:
            got = result_from_log(st.log_file, st.key, sweep=self.sweep.name,
                                  max_steps=self.sweep.target.max_steps)
            if got.problem is not None:
                got = replace(got, problem=f"last line of {st.log_file.name}: {got.problem}")
        elif got.problem is not None:
            got = replace(got, problem=f"{st.result_file.name}: {got.problem}")
        return got

    def reap(self) -> None:
        """Turn ended processes into final observations, or restart them from checkpoint."""
        if self._procs is None:
            return
        for proc, code in self._procs.reap():
            st = self.by_name[proc.name]
            why_failed, last = self._exit(st)
            kind = classify(code)
            lost_port = kind is ExitKind.BAD_CONFIG and _lost_its_port(last)
            if lost_port:
                kind = ExitKind.CRASHED  # someone took the port first: worth another try
            got = self._ended_result(st, kind)
            if got.result is not None:
                st.final = self.final_from_result(st, got.result, None)
                self.log("finished", batch_size=st.key.batch_size, seed=st.key.seed,
                         phase=st.final.phase.value, steps=st.final.steps,
                         source=st.final.source)
            elif got.problem is not None:  # a result that is not this trial's: never counted
                st.final = self._failed(st, f"refused result: {got.problem}")
                self.log("failed", batch_size=st.key.batch_size, seed=st.key.seed,
                         code=code, reason=st.final.reason)
            elif st.deadline_hit:
                limit = self.sweep.trainer.active_deadline_seconds
                st.final = self._failed(st, f"DeadlineExceeded: no result within {limit} s "
                                        "(spec.trainer.activeDeadlineSeconds)")
                self.log("failed", batch_size=st.key.batch_size, seed=st.key.seed,
                         code=code, reason=st.final.reason)
            elif proc.stop_requested and st.stop_reason is not None:
                m = st.metrics or TrialMetrics()
                st.final = planner.Observation(
                    st.key, planner.Phase.Pruned, steps=m.step, value=m.value,
                    source=self.source, reason=st.stop_reason, restarts=st.restarts)
                self.log("pruned", batch_size=st.key.batch_size, seed=st.key.seed,
                         steps=m.step, reason=st.stop_reason)
            elif proc.stop_requested:
                pass  # stopped by Ctrl-C: not final, resumable from its checkpoint
            elif lost_port and st.ports_lost < PORT_RETRIES:
                # A race of this machine's shared loopback, which a pod's own network never
                # has: a new port, not one of the trial's backoffLimit restarts.
                st.ports_lost += 1
                self.log("port-taken", batch_size=st.key.batch_size, seed=st.key.seed,
                         port=st.port)
                self.start(st)
            elif kind in (ExitKind.FINISHED, ExitKind.BAD_CONFIG) or \
                    st.restarts >= self.sweep.trainer.backoff_limit:
                why = ("exited 0 without a result (in neither CRITBATCH_RESULT_FILE nor the "
                       "last line of stdout)") if kind is ExitKind.FINISHED else \
                    f"exit {code} ({kind.value})"
                tail = why_failed or log_tail(st.log_file)
                st.final = self._failed(st, f"{why}: {tail}" if tail else why)
                self.log("failed", batch_size=st.key.batch_size, seed=st.key.seed,
                         code=code, reason=st.final.reason)
            else:
                st.restarts += 1
                more = {"reason": why_failed} if why_failed else {}
                self.log("trainer-exit", batch_size=st.key.batch_size, seed=st.key.seed,
                         code=code, exit=kind.value, **more)
                self.start(st)

    def _exit(self, st: TrialState) -> tuple[str | None, str]:
        """The failed worker a launcher's report names on this attempt (or None), and the
        line that tells a lost metrics port (rank 0's, before the launcher's report)."""
        if self.workers == 1:
            return None, log_tail(st.log_file)
        failure, report = failed_worker(st.log_file)
        return failure, next((ln for ln in report.splitlines() if _lost_its_port(ln)), "")
