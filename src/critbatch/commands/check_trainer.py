"""`critbatch check-trainer -- CMD [ARG...]`: does a training script speak the trial protocol?

It runs CMD once as one tiny trial, exactly as a sweep would (the CRITBATCH_* variables, a
result file, a checkpoint directory, a metrics port on loopback), watches it (its /metrics
page, its output, optionally a SIGTERM), and judges what it saw with `critbatch.conformance`,
so a user learns what to fix before a sweep's trials fail one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from critbatch import conformance, protocol
from critbatch.commands import print_json, stdout_console
from critbatch.errors import InputError
from critbatch.metrics import MetricsUnavailable, TrialMetrics, scrape
from critbatch.protocol import TrialSettings
from critbatch.vocabulary import Goal, TrialKey

HELP = "run a training command once as a tiny trial and check that it speaks the trial protocol"

OUTPUT_TAIL = 64 * 1024  # bytes of each output stream kept: the result line is under 4000
RESULT_READ_LIMIT = 64 * 1024
SCRAPE_EVERY = 0.5  # seconds between reads of the trainer's /metrics page
SCRAPE_TIMEOUT = 1.0
POLL = 0.05
STDERR_CHARS = 200
CHECK_SWEEP = "check-trainer"
_FIELDS = tuple(f.name for f in dataclasses.fields(TrialMetrics) if f.name != "invalid")
_STYLE = {conformance.Status.ok: "green", conformance.Status.warning: "yellow",
          conformance.Status.missing: "red", conformance.Status.broken: "red"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `check-trainer` to the CLI."""
    p = subparsers.add_parser(
        "check-trainer", help=HELP, usage="%(prog)s [options] -- CMD [ARG...]",
        description=HELP + ". The command gets the CRITBATCH_* variables of one trial "
        "(docs/trial-protocol.md), a temporary result file and checkpoint directory and a free "
        "loopback metrics port; its exit code, result file, last stdout line and /metrics page "
        "are checked as a sweep reads them. Exit code 0 when every required part conforms.",
        epilog="example: critbatch check-trainer --threshold 0.9 --metric accuracy --goal "
        "maximize -- python train.py")
    p.add_argument("--threshold", required=True, metavar="X",
                   help="the target threshold (CRITBATCH_TARGET_THRESHOLD)")
    p.add_argument("--metric", default=protocol.DEFAULT_METRIC,
                   help="the target metric's name (default fid)")
    p.add_argument("--goal", default=Goal.minimize.value, help="minimize (default) or maximize")
    p.add_argument("--batch-size", default="8", metavar="B", help="the trial's batch size "
                   "(default 8)")
    p.add_argument("--seed", default="0", metavar="S", help="the trial's seed (default 0)")
    p.add_argument("--max-steps", default="200", metavar="N", help="the step budget "
                   "(default 200)")
    p.add_argument("--eval-every", metavar="N", help="steps between evaluations (default: "
                   "not set, the trainer's own)")
    p.add_argument("--timeout", default="300", metavar="SECONDS", help="kill the command "
                   "(and its process group) after this long (default 300)")
    p.add_argument("--sigterm-after", metavar="SECONDS", help="send SIGTERM this long after "
                   "the start and check that the trial checkpoints and exits 143 without a "
                   "result")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                   help="the training command, run without a shell")
    p.set_defaults(func=run)


def _count(text: str, option: str, low: int) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 12) or int(value) < low:
        raise InputError(f"{option}: must be an integer >= {low}, got {text!r}")
    return int(value)


def _seconds(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{option}: must be a number of seconds > 0, got {text!r}")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"--threshold: must be a finite number, got {text!r}")
    return value


def command_of(args: argparse.Namespace) -> list[str]:
    """The command after `--`; InputError when there is none."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command or not command[0]:
        raise InputError("command: missing: critbatch check-trainer [options] -- CMD [ARG...]")
    return command


def settings_of(args: argparse.Namespace, *, port: int, workdir: Path) -> TrialSettings:
    """The trial the command is told to run; InputError naming a bad option."""
    if not protocol.METRIC_NAME.fullmatch(args.metric):
        raise InputError(f"--metric: expected a name of letters, digits, _ . : - (at most 63), "
                         f"got {args.metric!r}")
    if args.goal not in Goal.__members__:
        raise InputError(f"--goal: expected minimize or maximize, got {args.goal!r}")
    return TrialSettings(
        batch_size=_count(args.batch_size, "--batch-size", 1),
        seed=_count(args.seed, "--seed", 0),
        max_steps=_count(args.max_steps, "--max-steps", 1),
        threshold=_threshold(args.threshold),
        metric=args.metric,
        goal=Goal(args.goal),
        metrics_port=port,
        metrics_host="127.0.0.1",
        result_file=str(workdir / "result.json"),
        checkpoint_dir=str(workdir / "checkpoint"),
        eval_every=_count(args.eval_every, "--eval-every", 1) if args.eval_every else None,
        sweep=CHECK_SWEEP,
    )


class _Tail:
    """The last OUTPUT_TAIL bytes of a stream, read to its end by a thread of its own (so the
    command never blocks on a full pipe)."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self.data = bytearray()
        self._stream = stream
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self._stream.read1(65536):
                self.data += chunk
                if len(self.data) > OUTPUT_TAIL:
                    del self.data[:-OUTPUT_TAIL]
        with contextlib.suppress(OSError):
            self._stream.close()

    def last_line(self) -> str | None:
        self.thread.join(timeout=5)
        lines = [ln.strip() for ln in bytes(self.data).decode(errors="replace").splitlines()]
        kept = [ln for ln in lines if ln]
        return kept[-1] if kept else None


class _Metrics:
    """What the command's /metrics page showed of the trial over the run."""

    def __init__(self, url: str, key: TrialKey) -> None:
        self.url, self.key = url, key
        self.pages = 0
        self.seen: set[str] = set()
        self.trials: set[TrialKey] = set()
        self.invalid: str | None = None

    def read(self, deadline: float) -> None:
        try:
            page = scrape(self.url, timeout=SCRAPE_TIMEOUT, deadline=deadline)
        except MetricsUnavailable:
            return
        self.pages += 1
        self.trials |= {TrialKey(*k) for k in page}
        m = page.get((self.key.batch_size, self.key.seed))
        if m is None:
            return
        if m.invalid is not None:
            self.invalid = self.invalid or m.invalid
        self.seen |= {f for f in _FIELDS if getattr(m, f) is not None}


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _read_bounded(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(RESULT_READ_LIMIT)
    except OSError:  # absent, or not a file: no result either way
        return None


def _printable(text: str | None) -> str:
    line = "".join(c if c.isprintable() else "?" for c in (text or ""))
    return line if len(line) <= STDERR_CHARS else line[:STDERR_CHARS - 3] + "..."


def observe(command: list[str], settings: TrialSettings, *, timeout: float,
            sigterm_after: float | None = None) -> conformance.Observed:
    """Run `command` once as the trial `settings` describes and record what it does."""
    env = {k: v for k, v in os.environ.items() if k not in protocol.ALL_VARS}
    env.update(settings.env(), PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        raise InputError(f"command: cannot run {command[0]!r}: {e.strerror or e}") from None
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(proc.stdout), _Tail(proc.stderr)
    print(f"critbatch check-trainer: running {shlex.join(command)} (at most {timeout:g} s)",
          file=sys.stderr, flush=True)
    metrics = _Metrics(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
                       settings.key)
    start = time.monotonic()
    deadline = start + timeout
    next_read = start + SCRAPE_EVERY / 2
    sigterm_sent: float | None = None
    timed_out = False
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if sigterm_after is not None and sigterm_sent is None and now - start >= sigterm_after:
                _kill_group(proc, signal.SIGTERM)
                sigterm_sent = now - start
            if now >= next_read:
                metrics.read(deadline)
                next_read = time.monotonic() + SCRAPE_EVERY
            time.sleep(POLL)
    finally:
        seconds = time.monotonic() - start
        _kill_group(proc, signal.SIGKILL)  # a hang, or what the command left running
        proc.wait()
    ckpt = Path(settings.checkpoint_dir or "")
    return conformance.Observed(
        exit_code=None if timed_out else proc.returncode,
        seconds=seconds,
        result_file=_read_bounded(Path(settings.result_file or "")),
        last_line=out.last_line(),
        stderr_tail=_printable(err.last_line()),
        sigterm_after=sigterm_after,
        sigterm_sent=sigterm_sent,
        metrics_pages=metrics.pages,
        metrics_seen=frozenset(metrics.seen),
        metrics_trials=frozenset(metrics.trials),
        metrics_invalid=metrics.invalid,
        checkpoint_files=sum(1 for p in ckpt.rglob("*") if p.is_file()) if ckpt.is_dir() else 0,
    )


def _free_port() -> int:
    from critbatch.local.prometheus import free_port

    return free_port()


def run(args: argparse.Namespace) -> int:
    """Run the command, print the checks; 0 when it conforms, 1 when it does not."""
    command = command_of(args)
    timeout = _seconds(args.timeout, "--timeout")
    sigterm_after = (_seconds(args.sigterm_after, "--sigterm-after")
                     if args.sigterm_after is not None else None)
    if sigterm_after is not None and sigterm_after >= timeout:
        raise InputError(f"--sigterm-after: must be below --timeout {timeout:g}, got "
                         f"{sigterm_after:g}")
    with tempfile.TemporaryDirectory(prefix="critbatch-check-") as tmp:
        workdir = Path(tmp)
        settings = settings_of(args, port=_free_port(), workdir=workdir)
        Path(settings.checkpoint_dir or "").mkdir()
        seen = observe(command, settings, timeout=timeout, sigterm_after=sigterm_after)
    checks = conformance.evaluate(settings, seen)
    ok = conformance.passed(checks)
    if args.json:
        print_json({"protocol": protocol.VERSION, "command": command,
                    "settings": _settings_dict(settings), "seconds": round(seen.seconds, 3),
                    "passed": ok, "checks": [c.as_dict() for c in checks]})
        return 0 if ok else 1
    _print_table(command, settings, checks, ok)
    return 0 if ok else 1


def _settings_dict(settings: TrialSettings) -> dict[str, object]:
    return {"batch_size": settings.batch_size, "seed": settings.seed,
            "metric": settings.metric, "goal": settings.goal.value,
            "threshold": settings.threshold, "max_steps": settings.max_steps,
            "eval_every": settings.eval_every}


def _print_table(command: list[str], settings: TrialSettings,
                 checks: list[conformance.Check], ok: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    side = "<=" if settings.goal is Goal.minimize else ">="
    console.print(f"ran: {shlex.join(command)}", markup=False, soft_wrap=True)
    console.print(f"as batch size {settings.batch_size}, seed {settings.seed}, target "
                  f"{settings.metric} {side} {settings.threshold:g} within {settings.max_steps} "
                  "steps", markup=False, soft_wrap=True)
    table = Table(title=f"trial protocol v{protocol.VERSION}", title_justify="left")
    for col in ("part", "status", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(Text(c.part), Text(c.status.value, style=_STYLE[c.status]),
                      Text(c.detail))
    console.print(table)
    failing = [c for c in checks if c.status in conformance.FAILING]
    warnings = sum(c.status is conformance.Status.warning for c in checks)
    if ok:
        extra = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
        console.print(f"conforms to the trial protocol v{protocol.VERSION}{extra}",
                      style="green", markup=False)
    else:
        console.print(f"does not conform: {', '.join(c.part for c in failing)}", style="red",
                      markup=False)
