"""What a local run is asked to do: its options, its trainer command, where it reads metrics,
and its input error."""

from __future__ import annotations

import enum
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from critbatch.errors import InputError
from critbatch.spec import Sweep


class RunError(InputError):
    """A local run that cannot start: the message names the option or path at fault."""


class MetricsMode(enum.StrEnum):
    """Where a local run reads its trials' metrics; the text appears in events and output."""

    AUTO = "auto"  # decided by spec.metrics (metrics_mode)
    DIRECT = "direct"  # scrape each trainer's /metrics
    PROMETHEUS = "prometheus"  # an existing server, which must read the run's targets file
    WITH_PROMETHEUS = "with-prometheus"  # a private server the run starts on loopback


@dataclass(kw_only=True)
class RunOptions:
    """How to run a sweep locally; the defaults are what `critbatch run SWEEP.yaml` does."""

    out_dir: Path
    resume: bool = False
    metrics: MetricsMode = MetricsMode.AUTO
    prometheus_url: str | None = None
    sd_file: Path | None = None  # file_sd targets for an existing server to read
    # None: the built-in trainer in this Python (a sweep with spec.trainer.command runs that).
    trainer_command: Sequence[str] | None = None
    workdir: Path | None = None  # where spec.trainer.command runs (None: the current directory)
    threads: int | None = None
    poll_interval: float = 0.5
    linger: float | None = None
    scrape_interval: float = 1.0
    reference_noise_ratio: float | None = None
    # A finished run (its directory or status file) whose noise ratio predicts b*; default:
    # runs/<spec.reference.sweep>/ beside this run's output directory.
    reference_run: Path | None = None
    retry_failed: bool = False  # with resume: start Failed trials again
    warm: bool = True  # fork the built-in trainer's trials from a server (local/warm.py)


BUILTIN_TRAINER = (sys.executable, "-m", "critbatch_trainer")


def trial_command(sweep: Sweep, options: RunOptions) -> list[str]:
    """The program a trial runs: the sweep's own command, else --trainer, else the built-in
    trainer; --trainer replaces only the built-in one."""
    if sweep.trainer.custom:
        if options.trainer_command is not None:
            raise RunError("--trainer: this sweep names its own trainer (spec.trainer.command); "
                           "--trainer replaces only the built-in one")
        return list(sweep.trainer.command)
    return list(options.trainer_command or BUILTIN_TRAINER)


def metrics_mode(sweep: Sweep) -> tuple[MetricsMode, str | None]:
    """What spec.metrics means on this machine: its Prometheus URL, a private server, or none.

    `source: prometheus` with a `prometheusURL` uses that server (it must read the run's
    targets file); without a URL the run starts its own; anything else scrapes directly.
    """
    if sweep.metrics.source == "prometheus":
        if sweep.metrics.prometheus_url:
            return MetricsMode.PROMETHEUS, sweep.metrics.prometheus_url
        return MetricsMode.WITH_PROMETHEUS, None
    return MetricsMode.DIRECT, None


def trial_path(env_path: str | None = None) -> str:
    """The trials' PATH: this Python's directory first, so that a custom command's `python`
    is the one critbatch runs in (with its packages), then the PATH it was given."""
    here = os.path.dirname(sys.executable)
    rest = os.environ.get("PATH", os.defpath) if env_path is None else env_path
    return os.pathsep.join([here, rest]) if here else rest


def check_trainer(command: Sequence[str], *, what: str = "--trainer",
                  cwd: Path | None = None) -> None:
    """The trainer command's program exists and may run, or a RunError naming `what` (the
    option, or spec.trainer.command[0]); a relative path is taken from `cwd`."""
    if not command or not command[0]:
        raise RunError(f"{what}: must not be empty")
    program = command[0]
    if os.sep in program:
        path = Path(cwd or ".") / program
        if not path.exists():
            raise RunError(f"{what}: no such file: {path}")
        if not path.is_file() or not os.access(path, os.X_OK):
            raise RunError(f"{what}: {path} is not an executable file")
    elif shutil.which(program, path=trial_path()) is None:
        raise RunError(f"{what}: no {program!r} on PATH")
