"""Trial processes on this machine: start, watch, stop, and tell a crash from a kill.

Each trial runs in its own process group (so a stop reaches the trainer's children too) with
its output appended to a per-trial log file. On Linux the child also gets a parent-death
signal, so even a `kill -9` of the runner leaves no trainer behind.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from critbatch.orphans import end_with_parent

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_START_LINE = re.compile(r"^# \S+ start: ", re.MULTILINE)  # Supervisor.start's line in a log


class ExitKind(enum.StrEnum):
    """What a trainer's exit status means (docs/contracts.md: 0 done, 2 config, 1 crash)."""

    FINISHED = "finished"
    BAD_CONFIG = "bad-config"
    CRASHED = "crashed"
    TERMINATED = "terminated"  # SIGTERM: checkpoint saved, exit 143
    KILLED = "killed"  # another signal (kill -9, the OOM killer): no checkpoint at exit


def classify(returncode: int) -> ExitKind:
    if returncode == 0:
        return ExitKind.FINISHED
    if returncode == 2:
        return ExitKind.BAD_CONFIG
    if returncode in (143, -signal.SIGTERM):
        return ExitKind.TERMINATED
    if returncode < 0 or returncode > 128:
        return ExitKind.KILLED
    return ExitKind.CRASHED


def thread_limit(parallelism: int, cpus: int | None = None) -> int:
    """Threads per trial so that `parallelism` trials share the CPUs without oversubscribing."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))  # the cores this process may use
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, parallelism))


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first, found by their parent in /proc (none where
    there is no /proc). A launcher's workers are each in a session of their own, which a
    signal to the launcher's process group does not reach."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue += children.get(child, [])
    return found


@dataclass
class TrialProcess:
    """One running (or ended) trial process and the bookkeeping the runner needs about it."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    stop_requested: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the trial's process group and the groups of all its descendants: a
        launcher's workers too, which would outlive it otherwise."""
        below = descendants(self.popen.pid)
        self.signal_group(signal.SIGKILL)
        own = os.getpgrp()
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group != own:
                    os.killpg(group, signal.SIGKILL)


class Supervisor:
    """Starts trial processes and stops every one of them on exit (a context manager)."""

    def __init__(self, env: Mapping[str, str] | None = None, threads: int | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        if threads is not None:
            for var in THREAD_VARIABLES:
                self.env[var] = str(threads)
        self.processes: dict[str, TrialProcess] = {}

    def start(self, name: str, argv: Sequence[str], log_path: Path, *,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              death_signal: int = signal.SIGKILL) -> TrialProcess:
        """Start `argv` (a list, never a shell string) in `cwd` with its output appended to
        `log_path`; `env` adds to the supervisor's environment. The process gets
        `death_signal` when the runner dies (a launcher: SIGTERM, which it passes on to its
        workers; SIGKILL would leave them running)."""
        if name in self.processes and self.processes[name].poll() is None:
            raise RuntimeError(f"{name}: already running as pid {self.processes[name].pid}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # local time: for a person reading
            log.write(f"# {stamp} start: {shlex.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=functools.partial(end_with_parent, death_signal),
            )
        proc = TrialProcess(name, list(argv), log_path, popen)
        self.processes[name] = proc
        return proc

    def reap(self) -> list[tuple[TrialProcess, int]]:
        """Processes that ended since the last call, with their exit status; forgets them."""
        ended = []
        for name, proc in list(self.processes.items()):
            code = proc.poll()
            if code is not None:
                proc.signal_group(signal.SIGKILL)  # leftovers of the group, if any
                ended.append((proc, code))
                del self.processes[name]
        return ended

    def request_stop(self, name: str) -> None:
        """SIGTERM the trial's group (the trainer checkpoints and exits); reap() reports it."""
        proc = self.processes.get(name)
        if proc is not None and proc.poll() is None:
            proc.stop_requested = True
            proc.signal_group(signal.SIGTERM)

    def stop_all(self, grace: float = 15.0) -> list[tuple[TrialProcess, int]]:
        """SIGTERM every trial, wait up to `grace` s in total, SIGKILL the rest; reap all."""
        for name in list(self.processes):
            self.request_stop(name)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.popen.wait()
        return self.reap()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def log_attempt(path: Path, limit: int = 65536) -> str:
    """The log's text since its last `# ... start:` line (the latest attempt), at most its
    last `limit` bytes: what a launcher reported about this attempt, not an earlier one."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    starts = list(_START_LINE.finditer(text))
    return text[starts[-1].start():] if starts else text


def log_tail(path: Path, lines: int = 1, limit: int = 300) -> str:
    """The last non-empty lines of a log, shortened: a reason that fits in a status field."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
    tail = " | ".join(kept[-lines:])
    return tail if len(tail) <= limit else "..." + tail[-limit:]
