"""A group of trials as concurrent processes sharing one device (`--trials B:S[,B:S...]`).

A small-batch trial leaves a big GPU idle; k of them in one pod fill it. The parent only
spawns one child trainer per (batch size, seed), forwards their output and signals, serves
all their metrics on one endpoint (prometheus_client's multiprocess mode) and gathers their
results. It never imports torch, so it starts fast and holds no GPU memory. A child's crash
does not stop the others. docs/trainer.md describes the contract.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from critbatch.vocabulary import TrialKey, TrialsError, parse_trials
from critbatch_trainer import numerics
from critbatch_trainer.config import given_flags, parse_args
from critbatch_trainer.settings import GROUP_SIZE_ENV, PROG, ConfigError, TrainerConfig
from critbatch_trainer.termination import termination_text, write_termination_log

FAILURE_CHARS = 300
TRIALS_FLAG = "--trials"


def _tag(key: TrialKey) -> str:
    """How a child's lines are prefixed: `b=8 s=0`."""
    return f"b={key.batch_size} s={key.seed}"


def _key_flags(key: TrialKey) -> list[str]:
    return ["--batch-size", str(key.batch_size), "--seed", str(key.seed)]


@dataclass
class _Child:
    key: TrialKey
    proc: subprocess.Popen[str]
    result_file: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    readers: list[threading.Thread] = field(default_factory=list)


def split_trials(argv: list[str]) -> tuple[str, list[str]] | None:
    """(the --trials value, every other argument in order), or None without --trials."""
    value: str | None = None
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == TRIALS_FLAG or arg.startswith(TRIALS_FLAG + "="):
            if value is not None:
                raise ConfigError("trials: given more than once")
            value = arg[len(TRIALS_FLAG) + 1:] if "=" in arg else next(it, None)
            if value is None:
                raise ConfigError("trials: expected batch_size:seed[,batch_size:seed...]")
        else:
            rest.append(arg)
    return None if value is None else (value, rest)


def group_keys(text: str) -> list[TrialKey]:
    """The trials of `--trials B:S,B:S,...`; ConfigError (exit 2) when they cannot be run."""
    try:
        return parse_trials(text)
    except TrialsError as e:
        raise ConfigError(str(e)) from None


def child_argv(rest: list[str], key: TrialKey, *, cfg: TrainerConfig, result_file: Path,
               threads: int | None) -> list[str]:
    """The child's command line: the group's flags, then the overrides (the last flag wins)."""
    args = [sys.executable, "-m", "critbatch_trainer", *rest, *_key_flags(key),
            "--metrics-port", "0", "--linger", "0", "--termination-log", str(result_file)]
    if cfg.checkpoint_dir:
        args += ["--checkpoint-dir", str(Path(cfg.checkpoint_dir) / key.name)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return args


def _forward(stream: IO[str], out: IO[str], prefix: str, lock: threading.Lock,
             tail: deque[str] | None) -> None:
    """Copy a child's lines with its prefix; keeps draining when `out` breaks, so a child
    never blocks on a full pipe."""
    writable = True
    for line in stream:
        text = line.rstrip("\n")
        if tail is not None and text.strip():
            tail.append(text.strip())
        if writable:
            try:
                with lock:
                    out.write(f"{prefix}{text}\n")
                    out.flush()
            except (OSError, ValueError):
                writable = False
    stream.close()


def _exit_code(returncode: int) -> int:
    """A shell's view of a child's end: killed by signal n reads 128 + n."""
    return 128 - returncode if returncode < 0 else returncode


def _failure(child: _Child) -> str:
    code = child.proc.returncode
    last = child.tail[-1] if child.tail else (
        f"killed by {signal.Signals(-code).name}" if code < 0 else "no output")
    line = f"trial b={child.key.batch_size} seed={child.key.seed}: exit code " \
           f"{_exit_code(code)}: {last}"
    return line if len(line) <= FAILURE_CHARS else line[:FAILURE_CHARS - 3] + "..."


def _result(child: _Child) -> str | None:
    with contextlib.suppress(OSError):
        text = child.result_file.read_text().strip()
        if text:
            return text
    return None


def _serve(directory: Path, port: int, host: str) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from critbatch_trainer.metrics import serve_registry

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    try:
        return serve_registry(registry, port, host)
    except OSError as e:
        raise ConfigError(f"metrics-port: cannot listen on {host}:{port}: {e.strerror}") from None


def run(trials: str, rest: list[str]) -> int:
    """Run the group to its end; the exit code of docs/trainer.md. ConfigError: exit 2."""
    keys = group_keys(trials)
    clash = sorted(given_flags(rest) & {"batch_size", "seed"})
    if clash:
        raise ConfigError(f"trials: cannot be combined with --{clash[0].replace('_', '-')}")
    cfg = parse_args([*rest, *_key_flags(keys[0])])
    threads = max(1, cfg.threads // len(keys)) if cfg.threads else None
    state: dict[str, Any] = {"signals": 0, "signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        state["signals"] += 1
        state["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    work = Path(tempfile.mkdtemp(prefix="critbatch-group-"))
    server = None
    children: list[_Child] = []
    try:
        metrics_dir = work / "metrics"
        metrics_dir.mkdir()
        if cfg.metrics_port:
            server = _serve(metrics_dir, cfg.metrics_port, cfg.metrics_host)
        # The group's size lets a child's `--resident auto` leave room for its siblings.
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                   **{GROUP_SIZE_ENV: str(len(keys))})
        if threads is not None:
            env.update(OMP_NUM_THREADS=str(threads), CRITBATCH_THREADS=str(threads))
        if cfg.reproducible_cpu:
            env.update(numerics.REPRODUCIBLE_ENV)
        print(f"{PROG}: {len(keys)} trials as processes: " + ", ".join(map(_tag, keys))
              + (f"; {threads} threads each" if threads else ""), file=sys.stderr, flush=True)
        lock = threading.Lock()
        for key in keys:
            if state["signal"] is None:
                children.append(_start(key, rest, cfg=cfg, work=work, threads=threads, env=env,
                                       lock=lock))
        forwarded = _wait(children, state)
        results = [r for c in children if (r := _result(c)) is not None]
        stopped = {128 + s for s in forwarded} | {-s for s in forwarded}
        failures = [_failure(c) for c in children
                    if c.proc.returncode != 0 and c.proc.returncode not in stopped]
        write_termination_log(cfg.termination_log, termination_text(results, failures))
        for line in failures:
            print(f"{PROG}: {line}", file=sys.stderr, flush=True)
        for line in results:
            print(line, flush=True)
        if forwarded or len(children) < len(keys):
            return 128 + int(state["signal"])
        deadline = time.monotonic() + cfg.linger
        while server is not None and state["signal"] is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        codes = [c.proc.returncode for c in children]
        if all(code == 0 for code in codes):
            return 0
        return 2 if all(code == 2 for code in codes) else 1
    finally:
        _stop(children)
        if server is not None:
            server.shutdown()
            server.server_close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(work, ignore_errors=True)


def _wait(children: list[_Child], state: dict[str, Any]) -> set[int]:
    """Until every child has ended and its output is forwarded; the signals passed on."""
    forwarded: set[int] = set()
    seen = 0
    while any(c.proc.poll() is None for c in children):
        if state["signals"] > seen:
            seen = state["signals"]
            forwarded.add(state["signal"])
            for c in children:
                if c.proc.poll() is None:
                    c.proc.send_signal(state["signal"])
        time.sleep(0.1)
    for c in children:
        for t in c.readers:
            t.join(timeout=10)
    return forwarded


def _start(key: TrialKey, rest: list[str], *, cfg: TrainerConfig, work: Path,
           threads: int | None, env: dict[str, str], lock: threading.Lock) -> _Child:
    if cfg.checkpoint_dir:
        with contextlib.suppress(OSError):  # the child reports what it cannot write
            (Path(cfg.checkpoint_dir) / key.name).mkdir(parents=True, exist_ok=True)
    result_file = work / f"{key.name}.result"
    argv = child_argv(rest, key, cfg=cfg, result_file=result_file, threads=threads)
    proc = subprocess.Popen(argv, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    child = _Child(key, proc, result_file)
    prefix = f"[{_tag(key)}] "
    assert proc.stdout is not None and proc.stderr is not None
    for stream, out, tail in ((proc.stdout, sys.stdout, None),
                              (proc.stderr, sys.stderr, child.tail)):
        t = threading.Thread(target=_forward, args=(stream, out, prefix, lock, tail),
                             daemon=True)
        t.start()
        child.readers.append(t)
    return child


def _stop(children: list[_Child]) -> None:
    """Only when the parent itself fails: let running children checkpoint, then end them."""
    alive = [c for c in children if c.proc.poll() is None]
    for c in alive:
        c.proc.terminate()
    for c in alive:
        try:
            c.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
