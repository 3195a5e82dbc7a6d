"""Showing a local run's progress: a rich live table, JSON lines for scripts, or nothing.

The runner hands every view the sweep's status (the CR status schema) plus what only the
runner knows (live step rate, restarts); each view decides what to print.
"""

from __future__ import annotations

import errno
import json
import math
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from critbatch.report import fmt

_PHASE_STYLE = {
    "Pending": "dim",
    "Running": "cyan",
    "Reached": "green",
    "Censored": "yellow",
    "Pruned": "magenta",
    "Failed": "bold red",
    "Stopped": "yellow",
}


@dataclass(frozen=True, kw_only=True)
class TrialView:
    """One row of the progress display."""

    batch_size: int
    seed: int
    phase: str
    step: float | None = None
    max_steps: int | None = None
    value: float | None = None
    sfo: float | None = None
    eta_seconds: float | None = None
    restarts: int = 0
    source: str | None = None
    reason: str | None = None


class RateMeter:
    """Steps per second of one trial over the last minute of samples; None until two differ."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, step: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.samples and step < self.samples[-1][1]:
            self.samples.clear()  # restarted from an earlier checkpoint
        self.samples.append((now, step))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def eta(self, step: float, max_steps: float) -> float | None:
        """Seconds until the step budget at the current rate: an upper bound on the trial."""
        r = self.rate()
        return None if r is None else max(0.0, (max_steps - step) / r)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def answer(cbs: Mapping[str, Any]) -> str:
    """`b* 8 (P 0.97, resolved)` or `b* 8 (P 0.61, unresolved: 8, 16)`: the answer and how sure."""
    best = cbs.get("mostProbable")
    if best is None:
        return "b* —"
    chance = (cbs.get("probabilities") or {}).get(str(best))
    sure = f"P {chance:.2f}, " if isinstance(chance, int | float) else ""
    if cbs.get("resolved"):
        return f"b* {fmt(best)} ({sure}resolved)"
    plausible = ", ".join(fmt(b) for b in cbs.get("plausible") or [])
    return f"b* {fmt(best)} ({sure}unresolved: {plausible})"


def headline(status: Mapping[str, Any]) -> str:
    """One line: phase, trials done, the most probable b* and how sure, measured, fitted and
    predicted."""
    cbs = status.get("criticalBatchSize") or {}
    parts = [f"{status.get('phase', 'Pending')}",
             f"trials {status.get('trialsDone', 0)}/{status.get('trialsTotal', '?')}",
             answer(cbs), f"measured {fmt(cbs.get('measured'))}"]
    if cbs.get("fitted") is not None:
        text = f"fitted {fmt(cbs['fitted'])}"
        parts.append(text + _interval(cbs.get("interval")))
    elif cbs.get("notIdentifiable"):
        parts.append("fitted: not identifiable")
    if cbs.get("predicted") is not None:  # known before any trial ends: worth the headline
        grid = cbs.get("predictedGrid")
        parts.append(f"predicted {fmt(cbs['predicted'])}{_interval(cbs.get('predictedInterval'))}"
                     + (f" (grid {fmt(grid)})" if grid is not None else ""))
    return ", ".join(parts)


def _interval(iv: Any) -> str:
    return f" [{fmt(iv[0])}, {fmt(iv[1])}]" if iv else ""


def failure_reason(status: Mapping[str, Any]) -> str | None:
    """Why a finished sweep did not succeed, in one line: its Ready condition's reason and
    message (`TrialsFailed: trials failed at batch size(s) 16, ...`); None when it Succeeded."""
    if status.get("phase") == "Succeeded":
        return None
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or []
         if isinstance(c, Mapping) and c.get("type") == "Ready"), {})
    message = " ".join(str(ready.get("message") or "").split())
    reason = ready.get("reason")
    if not message:
        return f"phase {status.get('phase', 'unknown')}" + (f" ({reason})" if reason else "")
    return f"{reason}: {message}" if reason else message


class Progress:
    """The no-op view (`--quiet`): prints nothing while running; the command prints the end."""

    def start(self, sweep: str, out_dir: str, total: int) -> None:
        pass

    def update(
        self, status: Mapping[str, Any], trials: Sequence[TrialView], elapsed: float
    ) -> None:
        pass

    def event(self, kind: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class GuardedProgress(Progress):
    """A view that goes quiet once its output is gone (`critbatch run --json | head`, a closed
    terminal); `closed` then says why, and the run stops as if interrupted."""

    def __init__(self, view: Progress) -> None:
        self.view = view
        self.closed: str | None = None

    def _call(self, method: str, *args: Any, **fields: Any) -> None:
        if self.closed is not None:
            return
        try:
            getattr(self.view, method)(*args, **fields)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.closed = f"output closed: {(exc.strerror or 'broken pipe').lower()}"

    def start(self, sweep: str, out_dir: str, total: int) -> None:
        self._call("start", sweep, out_dir, total)

    def update(
        self, status: Mapping[str, Any], trials: Sequence[TrialView], elapsed: float
    ) -> None:
        self._call("update", status, trials, elapsed)

    def event(self, kind: str, **fields: Any) -> None:
        self._call("event", kind, **fields)

    def close(self) -> None:
        self._call("close")


class JsonProgress(Progress):
    """JSON lines on stdout: events as they happen and a progress record at most every 5 s."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.every = every
        self._last = -math.inf

    def _emit(self, record: Mapping[str, Any]) -> None:
        self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self.stream.flush()

    def start(self, sweep: str, out_dir: str, total: int) -> None:
        self._emit({"event": "start", "sweep": sweep, "out": out_dir, "trials": total})

    def update(
        self, status: Mapping[str, Any], trials: Sequence[TrialView], elapsed: float
    ) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self._emit({
            "event": "progress",
            "elapsed": round(elapsed, 1),
            "phase": status.get("phase"),
            "trialsDone": status.get("trialsDone"),
            "trialsTotal": status.get("trialsTotal"),
            "criticalBatchSize": status.get("criticalBatchSize"),
            "trials": [{k: v for k, v in asdict(t).items() if v is not None} for t in trials],
        })

    def event(self, kind: str, **fields: Any) -> None:
        self._emit({"event": kind, **fields})


class RichProgress(Progress):
    """A live table in the terminal: per trial its state, step, target metric, SFO and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self.title = ""
        self.threshold: float | None = None

    def start(self, sweep: str, out_dir: str, total: int) -> None:
        self.title = f"critbatch run {sweep}  →  {out_dir}"
        self.live = Live(Text(self.title), console=self.console, refresh_per_second=2,
                         transient=False)
        self.live.start()

    def update(
        self, status: Mapping[str, Any], trials: Sequence[TrialView], elapsed: float
    ) -> None:
        if self.live is not None:
            self.live.update(self.render(status, trials, elapsed))

    def render(
        self, status: Mapping[str, Any], trials: Sequence[TrialView], elapsed: float
    ) -> Group:
        table = Table(title=self.title, title_justify="left", expand=False)
        metric = str((status.get("target") or {}).get("metric") or "value")
        for col, just in (("b", "right"), ("seed", "right"), ("state", "left"),
                          ("step", "right"), (metric, "right"), ("SFO", "right"),
                          ("ETA", "right"), ("restarts", "right")):
            table.add_column(col, justify=just, no_wrap=True)
        table.add_column("note", no_wrap=True, overflow="ellipsis", max_width=40)
        for t in trials:
            step = fmt(t.step) + (f"/{t.max_steps}" if t.max_steps else "")
            eta = duration(t.eta_seconds) if t.phase == "Running" else ""
            note = t.reason or (t.source or "")
            table.add_row(str(t.batch_size), str(t.seed),
                          Text(t.phase, style=_PHASE_STYLE.get(t.phase, "")), step,
                          fmt(t.value), fmt(t.sfo), eta, str(t.restarts) if t.restarts else "",
                          Text(note, style="dim"))
        foot = Text(f"{headline(status)}   elapsed {duration(elapsed)}")
        return Group(table, foot)

    def event(self, kind: str, **fields: Any) -> None:
        if kind in ("restart", "failed", "warning", "stopping", "reference", "predicted",
                    "retry"):
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            self.console.print(Text(f"{kind}: {text}", style="yellow"))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class PlainProgress(Progress):
    """One line per event on stderr: the live table's stand-in when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def start(self, sweep: str, out_dir: str, total: int) -> None:
        print(f"critbatch run {sweep}: {total} trials -> {out_dir}", file=self.stream,
              flush=True)

    def event(self, kind: str, **fields: Any) -> None:
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{kind}: {text}", file=self.stream, flush=True)


def make_progress(mode: str) -> Progress:
    """`rich` (a live table; plain lines when stderr is not a terminal), `json` or `quiet`."""
    if mode == "json":
        return JsonProgress()
    if mode == "quiet":
        return Progress()
    console = Console(stderr=True)
    return RichProgress(console) if console.is_terminal else PlainProgress()
