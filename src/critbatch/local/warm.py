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
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from critbatch.local.options import BUILTIN_TRAINER
from critbatch.orphans import end_with_parent

MODULE = "critbatch_trainer.warm"
_BUILTIN = list(BUILTIN_TRAINER[1:])  # after the interpreter: -m critbatch_trainer


def can_start_warm(command: Sequence[str], *, custom: bool, workers: int) -> bool:
    """Whether trials of `command` can be forked by the warm server: the built-in trainer
    (`PYTHON -m critbatch_trainer`), one process per trial."""
    return not custom and workers == 1 and list(command[-2:]) == _BUILTIN and len(command) > 2


_DIR_PREFIX = "critbatch-warm-"


def remove_stale_directories(tmp: Path) -> None:
    """Remove this user's socket directories (`critbatch-warm-PID-*`) whose runner, PID, has
    gone: a runner killed with SIGKILL could not remove its own. A reused PID only keeps one."""
    for entry in tmp.glob(f"{_DIR_PREFIX}*-*"):
        pid = entry.name[len(_DIR_PREFIX):].split("-", 1)[0]
        try:
            info = entry.lstat()
            if not pid.isdigit() or info.st_uid != os.getuid() or \
                    not stat.S_ISDIR(info.st_mode):
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # gone meanwhile, or a process of another user: leave it
            continue


class WarmServer:
    """A warm server: started once, asked for each trial, killed at the end."""

    def __init__(self, command: Sequence[str], log_path: Path, env: Mapping[str, str], *,
                 reproducible: bool) -> None:
        """`command`: the built-in trainer's (its interpreter serves); `env`: the trials'
        environment without a trial's own variables; `reproducible`: pin the CPU numerics
        before torch loads, as each trial would."""
        self.python = list(command[:-2])
        self.log_path = log_path
        # A private directory: only this user may reach the socket (and a path short
        # enough for a Unix socket, unlike a deep output directory).
        remove_stale_directories(Path(tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
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

    def kill(self) -> None:
        """Kill the server now and remove the socket's directory. Its trials die with it
        (their parent-death signal); it holds nothing else worth a graceful end."""
        if self.popen.poll() is None:  # a reaped server's group id may be another's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class WarmServers:
    """Warm servers that a campaign's sweeps share: one per interpreter, environment and
    numerics pinning, started for the first sweep that asks, ended with the campaign."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._servers: dict[tuple, WarmServer] = {}

    def get(self, command: Sequence[str], env: Mapping[str, str], *,
            reproducible: bool) -> WarmServer:
        """The live server for these settings, started if there is none (or it died)."""
        key = (tuple(command), reproducible, tuple(sorted(env.items())))
        server = self._servers.get(key)
        if server is None or not server.alive():
            if server is not None:
                server.kill()
            server = self._servers[key] = WarmServer(command, self.log_path, env,
                                                     reproducible=reproducible)
        return server

    def close(self) -> None:
        for server in self._servers.values():
            server.kill()
        self._servers.clear()


class WarmStarts:
    """A run's warm starts: the server starts with the run (or is the campaign's, shared) and
    is waited for at the first trial, so a resumed run with nothing left to do never waits for
    it; once it has gone, every trial starts cold, and the run says so once."""

    def __init__(self, command: Sequence[str], log_path: Path, env: Mapping[str, str], *,
                 reproducible: bool, log: Callable[..., None], warn: Callable[[str], None],
                 shared: WarmServers | None = None) -> None:
        self._log, self._warn = log, warn
        self._ready = False
        self._owned = shared is None
        self._server: WarmServer | None = (
            WarmServer(command, log_path, env, reproducible=reproducible) if shared is None
            else shared.get(command, env, reproducible=reproducible))
        self.log_path = self._server.log_path

    def trial_argv(self, args: Sequence[str]) -> list[str] | None:
        """The stand-in's command for a trial of the built-in trainer with `args`, or None:
        start it cold."""
        server = self._server
        if server is not None and not self._ready:
            self._ready = server.wait_ready()
            if self._ready:
                self._log("warm", pid=server.popen.pid)
        if server is None or not (self._ready and server.alive()):
            self._gone()
            return None
        return server.trial_argv(args)

    def _gone(self) -> None:
        if self._server is None:
            return
        self._server.kill()
        self._server = None
        self._warn(f"warm starts: the server ended (see {self.log_path}); trials start in "
                   "fresh processes")

    def stop(self) -> None:
        """End the server, unless a campaign shares it (its trials have ended, or are to die
        with their stand-ins)."""
        if self._server is not None and self._owned:
            self._server.kill()
