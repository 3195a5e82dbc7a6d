"""Warm starts of the built-in trainer in a local run (docs/local.md#warm-starts).

One server process per run imports torch and the trainer once and forks each trial
(critbatch_trainer.warm); a trial is then started as a small stand-in process that the runner
supervises, signals and kills exactly like the trainer itself. Only one-process trials of the
built-in trainer start warm: a custom command or PyTorch's launcher start as before, and so
does every trial once the server has gone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from critbatch.local.options import BUILTIN_TRAINER
from critbatch.orphans import end_with_parent

MODULE = "critbatch_trainer.warm"
_BUILTIN = list(BUILTIN_TRAINER[1:])  # after the interpreter: -m critbatch_trainer


def can_start_warm(command: Sequence[str], *, custom: bool, workers: int) -> bool:
    """Whether trials of `command` can be forked by the warm server: the built-in trainer
    (`PYTHON -m critbatch_trainer`), one process per trial."""
    return not custom and workers == 1 and list(command[-2:]) == _BUILTIN and len(command) > 2


class WarmServer:
    """The run's warm server: started once, asked for each trial, stopped at the end."""

    def __init__(self, command: Sequence[str], log_path: Path, env: Mapping[str, str], *,
                 reproducible: bool) -> None:
        """`command`: the built-in trainer's (its interpreter serves); `env`: the trials'
        environment without a trial's own variables; `reproducible`: pin the CPU numerics
        before torch loads, as each trial would."""
        self.python = list(command[:-2])
        # A private directory: only this user may reach the socket (and a path short
        # enough for a Unix socket, unlike a deep output directory).
        self.dir = Path(tempfile.mkdtemp(prefix="critbatch-warm-"))
        self.socket = str(self.dir / "s")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.python, "-m", MODULE, "serve", self.socket,
                *(["--reproducible-cpu"] if reproducible else [])]
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), start_new_session=True,
                preexec_fn=functools.partial(end_with_parent, signal.SIGKILL))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until the server listens (True) or has exited or timed out (False)."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if os.path.exists(self.socket):
                return True
            time.sleep(0.05)
        return False

    def trial_argv(self, args: Sequence[str]) -> list[str]:
        """The stand-in process for one trial of the built-in trainer with `args`."""
        return [*self.python, "-m", MODULE, "run", self.socket, "--", *args]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (after the trials have ended), SIGKILL after `grace` s; remove the socket."""
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        self.kill()

    def kill(self) -> None:
        """Kill the server now (its trials die with it: their parent-death signal) and remove
        the socket's directory."""
        self._signal(signal.SIGKILL)
        self.popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _signal(self, sig: int) -> None:
        if self.popen.poll() is None:  # a reaped server's group id may be another's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)


def start_server(command: Sequence[str], log_path: Path, env: Mapping[str, str], *,
                 reproducible: bool) -> WarmServer | None:
    """A warm server ready for trials, or None (and nothing left running) if it did not
    come up."""
    server = WarmServer(command, log_path, env, reproducible=reproducible)
    try:
        ready = server.wait_ready()
    except BaseException:  # Ctrl-C while it starts
        server.kill()
        raise
    if not ready:
        server.kill()
        return None
    return server
