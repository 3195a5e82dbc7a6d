"""Data-parallel trials on this machine: a trial's W worker processes started by PyTorch's
launcher (critbatch.launch), and what the launcher's exit means (docs/local.md).

A sweep written for several nodes runs all its workers here, so a trial trains as it would on
the cluster. The launcher starts each worker in a session of its own; its report names the
worker that failed first.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from critbatch import launch
from critbatch.local.processes import THREAD_VARIABLES, log_attempt
from critbatch.spec import Sweep


def workers(sweep: Sweep) -> int:
    """A trial's worker processes on this machine: all of a data-parallel trial's, whatever
    its nodes; a custom trainer is one process, which starts its own if it wants more."""
    return 1 if sweep.trainer.custom else sweep.trainer.world_size


def nodes_note(sweep: Sweep) -> str | None:
    """The run's warning when a sweep written for several nodes runs here on one machine."""
    t = sweep.trainer
    if t.custom or t.nodes == 1:
        return None
    return (f"spec.trainer.nodes: {t.nodes} nodes x {t.processes_per_node} processes run here "
            f"as {t.world_size} worker processes of one trial on this machine")


@dataclass(frozen=True)
class Launch:
    """How one trial's process starts: its argv, what it adds to the environment, and the
    signal it gets should the runner die."""

    argv: list[str]
    env: dict[str, str]
    death_signal: int


def launched(program: Sequence[str], *, workers: int, threads: int) -> Launch:
    """`program` as a trial of `workers` processes; as it is for one.

    The workers share the trial's `threads`: CRITBATCH_THREADS stays the trial's (the trainer
    divides it), the BLAS pools get each worker's share. A dying runner SIGTERMs a launcher,
    which stops its workers at their checkpoints; SIGKILL would leave them running.
    """
    if workers == 1:
        return Launch(list(program), {}, signal.SIGKILL)
    share = str(max(1, threads // workers))
    return Launch(launch.launch_command(program, python=sys.executable, processes=workers),
                  dict.fromkeys(THREAD_VARIABLES, share), signal.SIGTERM)


def failed_worker(log_file: Path) -> tuple[str | None, str]:
    """The worker the launcher's report names as failing first on this attempt (None if it
    names none), and the attempt's log, where rank 0's last words precede the report."""
    report = log_attempt(log_file)
    return launch.failure_summary(report), report
