"""Making any training script a critbatch trainer (docs/trial-protocol.md): `TrialReporter`
reads the trial's settings, serves its metrics, says when to stop, and writes its result.

Torch-free: it takes losses and metric values as numbers (a 0-d tensor converts), and leaves
the model, the data and the evaluation to the script:

    r = TrialReporter.from_env(on_sigterm=save_checkpoint)
    step = 0
    while not r.done:
        loss = train_one_batch(r.batch_size)
        step += 1
        r.step(step, loss=loss)
        if step % 50 == 0 or r.done:
            r.evaluate(step, validate())
    r.finish(params=n_params, dataset_size=n_examples)

A SIGTERM only sets a flag; the next `step` saves the checkpoint through `on_sigterm(step)`
and exits 143 without a result, so a checkpoint never holds a half-done step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from critbatch import protocol
from critbatch.protocol import ProtocolError, TrialSettings, result_problem
from critbatch.vocabulary import Goal

__all__ = ["EXIT_BAD_CONFIG", "EXIT_TERMINATED", "RESULT_LIMIT", "TrialReporter",
           "optimizer_settings", "settings_from"]

EXIT_BAD_CONFIG = 2
EXIT_TERMINATED = 128 + signal.SIGTERM
RESULT_LIMIT = 4000  # bytes: Kubernetes keeps 4096 of a termination message
PREFIX = "critbatch_trainer_"
LABELS = ("sweep", "batch_size", "seed")

# The flags that override the variables, each with the variable it stands for.
FLAGS = {
    "--batch-size": protocol.BATCH_SIZE,
    "--seed": protocol.SEED,
    "--max-steps": protocol.MAX_STEPS,
    "--threshold": protocol.TARGET_THRESHOLD,
    "--metric": protocol.TARGET_METRIC,
    "--goal": protocol.TARGET_GOAL,
    "--metrics-port": protocol.METRICS_PORT,
    "--result-file": protocol.RESULT_FILE,
    "--checkpoint-dir": protocol.CHECKPOINT_DIR,
}

# What `state()` holds: enough to resume the trial's bookkeeping from a checkpoint.
STATE_KEYS = ("step", "wall_seconds", "reached_at", "interpolated", "last")


def _crossing(prev: tuple[int, float], cur: tuple[int, float], threshold: float,
              goal: Goal) -> float | None:
    """Step where the line through two evaluations crosses the threshold, when it does."""
    sign = 1.0 if goal is Goal.minimize else -1.0
    (s0, v0), (s1, v1) = prev, cur
    a, b, t = sign * v0, sign * v1, sign * threshold
    if not (a > t >= b) or a == b:
        return None
    return s0 + (a - t) / (a - b) * (s1 - s0)


def _plain(value: Any) -> Any:
    """`value` with numpy and torch scalars made Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if not isinstance(value, str | int | float | bool | type(None)) and hasattr(value, "item"):
        return value.item()
    return value


def optimizer_settings(optimizer: Any) -> dict[str, Any]:
    """The result's `optimizer` object for a torch optimizer (duck-typed: its class name and
    `defaults`): Adam's and AdaBelief's `lr` and `betas`; RMSprop's `lr`, its `momentum` as
    beta1 and its smoothing `alpha` as beta2 (Proposition 3.4's reading)."""
    d = getattr(optimizer, "defaults", {})
    name = type(optimizer).__name__.lower()
    out: dict[str, Any] = {"name": name, "learning_rate": _plain(d.get("lr"))}
    if "betas" in d:
        out["beta1"], out["beta2"] = (float(_plain(b)) for b in d["betas"])
    elif "alpha" in d:
        out["beta1"], out["beta2"] = float(d.get("momentum", 0.0)), float(d["alpha"])
    return out


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False, description=(
        "A critbatch trial (docs/trial-protocol.md): the flags override the CRITBATCH_* "
        "variables."))
    for flag, var in FLAGS.items():
        p.add_argument(flag, dest=var, metavar=flag[2:].replace("-", "_").upper(),
                       help=f"overrides {var}")
    return p


def settings_from(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                  prog: str | None = None) -> tuple[TrialSettings, list[str]]:
    """The trial's settings (the flags in `argv` over the variables in `env`) and the
    arguments left for the script; a ProtocolError names the flag or variable at fault."""
    env = os.environ if env is None else env
    args, rest = _parser(prog).parse_known_args(sys.argv[1:] if argv is None else list(argv))
    merged = dict(env)
    given = {var: text for var, text in vars(args).items() if text is not None}
    merged.update(given)
    try:
        return TrialSettings.from_env(merged), rest
    except ProtocolError as exc:
        var, _, why = str(exc).partition(": ")
        if var in given:
            flag = next(f for f, v in FLAGS.items() if v == var)
            raise ProtocolError(f"{flag}: {why}") from None
        raise


@dataclass
class _Progress:
    step: int = 0
    wall_seconds: float = 0.0  # carried over from before a restart
    reached_at: int | None = None
    interpolated: float | None = None
    last: tuple[int, float] | None = None  # the last evaluation (step, value)


class _Metrics:
    """The trial's series (docs/trial-protocol.md#metrics) in a registry of their own."""

    def __init__(self, s: TrialSettings) -> None:
        self.registry = r = CollectorRegistry()
        self.labels = {"sweep": s.sweep, "batch_size": str(s.batch_size), "seed": str(s.seed)}
        p, lab = PREFIX, LABELS
        self.step = Gauge(p + "step", "Training steps done", lab, registry=r)
        self.samples = Counter(p + "samples", "Samples whose gradient was computed (steps x b)",
                               lab, registry=r)
        self.value = Gauge(p + "target_value", f"{s.metric} at the last evaluation", lab,
                           registry=r)
        self.reached = Gauge(p + "reached", f"1 once {s.metric} met the target", lab,
                             registry=r)
        self.finished = Gauge(p + "finished", "1 once the run ended (reached or censored)", lab,
                              registry=r)
        self.n = Gauge(p + "steps_to_threshold", "N(b): the first evaluated step that met the "
                       "target", lab, registry=r)
        self.max_steps = Gauge(p + "max_steps", "Step budget", lab, registry=r)
        self.threshold = Gauge(p + "target_threshold", f"The target's {s.metric} threshold",
                               lab, registry=r)
        self.loss = Gauge(p + "loss", "Last training loss", (*lab, "name"), registry=r)
        for gauge in (self.step, self.reached, self.finished):
            gauge.labels(**self.labels).set(0)
        self.max_steps.labels(**self.labels).set(s.max_steps)
        self.threshold.labels(**self.labels).set(s.threshold)
        self.server: Any = None

    def serve(self, host: str, port: int) -> None:
        self.server, _thread = start_http_server(port, host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class TrialReporter:
    """One trial's side of the protocol: settings in, progress and metrics out, one result.

    `on_sigterm(step)` saves a checkpoint; it runs inside `step`, after a SIGTERM arrived.
    `serve` False keeps the metrics in the registry without an endpoint (tests, notebooks).
    """

    def __init__(self, settings: TrialSettings, *,
                 on_sigterm: Callable[[int], object] | None = None, serve: bool = True,
                 out: TextIO | None = None, prog: str | None = None) -> None:
        self.settings = settings
        self.on_sigterm = on_sigterm
        self.prog = prog or os.path.basename(sys.argv[0] or "trainer")
        self._out = out
        self._progress = _Progress()
        self._started = time.monotonic()
        self._terminate = False
        self._result: dict[str, Any] | None = None
        self.args: list[str] = []  # the command line's arguments the reporter left alone
        self.metrics = _Metrics(settings)
        if serve and settings.metrics_port:
            try:
                self.metrics.serve(settings.metrics_host, settings.metrics_port)
            except OSError as exc:
                raise ProtocolError(
                    f"{protocol.METRICS_PORT}: cannot listen on {settings.metrics_host}:"
                    f"{settings.metrics_port}: {exc.strerror or exc}") from None
        self._previous_handler: Any = None
        with contextlib.suppress(ValueError):  # not the main thread: the caller's signals
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)

    @classmethod
    def from_env(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                 on_sigterm: Callable[[int], object] | None = None, *, serve: bool = True,
                 prog: str | None = None) -> TrialReporter:
        """The trial the environment (`env`, else os.environ) and the flags (`argv`, else
        sys.argv[1:]; flags it does not know are left in `.args` for the script) describe.

        Bad configuration, a port that cannot be bound included, prints one line
        `<prog>: error: <VAR or --flag>: <what is wrong>` and exits 2.
        """
        prog = prog or os.path.basename(sys.argv[0] or "trainer")
        try:
            settings, rest = settings_from(argv, env, prog)
            reporter = cls(settings, on_sigterm=on_sigterm, serve=serve, prog=prog)
        except ProtocolError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_CONFIG) from None
        reporter.args = rest
        return reporter

    # --- what the script reads -----------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def max_steps(self) -> int:
        return self.settings.max_steps

    @property
    def checkpoint_dir(self) -> str | None:
        return self.settings.checkpoint_dir

    def eval_every(self, default: int) -> int:
        """The sweep's evaluation interval (CRITBATCH_EVAL_EVERY), else the script's."""
        return self.settings.eval_every or default

    @property
    def current_step(self) -> int:
        return self._progress.step

    @property
    def reached(self) -> bool:
        return self._progress.reached_at is not None

    @property
    def steps_to_threshold(self) -> int | None:
        """N(b): the first evaluated step that met the target, once one did."""
        return self._progress.reached_at

    @property
    def done(self) -> bool:
        """True once the target is reached or the step budget is spent: time to stop."""
        return self.reached or self._progress.step >= self.settings.max_steps

    should_stop = done

    @property
    def wall_seconds(self) -> float:
        return self._progress.wall_seconds + time.monotonic() - self._started

    # --- progress ----------------------------------------------------------------------

    def _advance(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected an integer >= 0, got {step!r}")
        labels = self.metrics.labels
        done = self._progress.step
        if step > done:
            self.metrics.samples.labels(**labels).inc((step - done) * self.settings.batch_size)
            self._progress.step = step
        self.metrics.step.labels(**labels).set(self._progress.step)

    def step(self, step: int, **losses: float) -> None:
        """Training step `step` is done (losses as numbers, by name). A SIGTERM that arrived
        before saves the checkpoint through `on_sigterm(step)` and exits 143, no result."""
        self._advance(step)
        for name, loss in losses.items():
            self.metrics.loss.labels(**self.metrics.labels, name=name).set(float(_plain(loss)))
        if self._terminate:
            if self.on_sigterm is not None:
                self.on_sigterm(step)
            self.close()
            raise SystemExit(EXIT_TERMINATED)

    def evaluate(self, step: int, value: float) -> bool:
        """The target metric is `value` after step `step`; whether the target is reached (now
        or before). The first step that meets it is N(b); a NaN or infinite value is unknown
        and never meets it."""
        self._advance(step)
        value = float(_plain(value))
        p, s, labels = self._progress, self.settings, self.metrics.labels
        self.metrics.value.labels(**labels).set(value)
        if p.reached_at is None and s.reached(value):
            p.reached_at = step
            if p.last is not None and math.isfinite(p.last[1]):
                p.interpolated = _crossing(p.last, (step, value), s.threshold, s.goal)
            self.metrics.reached.labels(**labels).set(1)
            self.metrics.n.labels(**labels).set(step)
        p.last = (step, value)
        self._say(f"step {step} {s.metric} {value:.6g} (target {s.goal.value} "
                  f"{s.threshold:g}){' reached' if p.reached_at == step else ''}")
        return self.reached

    # --- checkpoints ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The trial's bookkeeping as plain JSON values: save it with a checkpoint and give it
        to `resume` after a restart, so N(b), the step and the wall time carry over."""
        p = self._progress
        return {"step": p.step, "wall_seconds": round(self.wall_seconds, 3),
                "reached_at": p.reached_at, "interpolated": p.interpolated,
                "last": list(p.last) if p.last is not None else None}

    def resume(self, state: Mapping[str, Any]) -> int:
        """Take over `state()` from a checkpoint; returns the step to continue after."""
        unknown = set(state) - set(STATE_KEYS)
        if unknown:
            raise ValueError(f"state: unknown keys {sorted(unknown)}")
        last = state.get("last")
        self._progress = _Progress(
            wall_seconds=float(state.get("wall_seconds", 0.0)),
            reached_at=state.get("reached_at"), interpolated=state.get("interpolated"),
            last=(int(last[0]), float(last[1])) if last else None)
        self._started = time.monotonic()
        self._advance(int(state.get("step", 0)))
        labels = self.metrics.labels
        if self._progress.last is not None:
            self.metrics.value.labels(**labels).set(self._progress.last[1])
        if self._progress.reached_at is not None:
            self.metrics.reached.labels(**labels).set(1)
            self.metrics.n.labels(**labels).set(self._progress.reached_at)
        return self._progress.step

    # --- the result -----------------------------------------------------------------------

    def result(self, **extra: Any) -> dict[str, Any]:
        """The result object `finish` writes, checked; ValueError when `extra` makes it
        invalid or longer than RESULT_LIMIT bytes."""
        p, s = self._progress, self.settings
        steps = p.reached_at if p.reached_at is not None else p.step
        value = p.last[1] if p.last is not None and math.isfinite(p.last[1]) else None
        data: dict[str, Any] = {
            "sweep": s.sweep, "batch_size": s.batch_size, "seed": s.seed,
            "reached": p.reached_at is not None, "steps": steps,
            "interpolated_steps": round(p.interpolated, 3) if p.interpolated is not None
            else None,
            "sfo": steps * s.batch_size, "metric": s.metric, "value": value,
            "goal": s.goal.value, "threshold": s.threshold, "max_steps": s.max_steps,
            "wall_seconds": round(self.wall_seconds, 3),
        }
        taken = sorted(set(extra) & set(data))
        if taken:
            raise ValueError(f"result: {', '.join(taken)} are the reporter's to set")
        data.update(_plain(extra))
        problem = result_problem(data, s.key, max_steps=s.max_steps)
        if problem is not None:
            raise ValueError(f"result: {problem}")
        try:
            size = len(_line(data).encode())
        except ValueError:
            raise ValueError("result: a NaN or infinite number among the extra keys (JSON has "
                             "none; use null)") from None
        if size > RESULT_LIMIT:
            raise ValueError(f"result: {size} bytes of JSON, over the {RESULT_LIMIT} a "
                             "termination message holds; pass fewer or shorter extra keys")
        return data

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Write the result (with `extra`, such as params, dataset_size, optimizer) to the
        result file and as the last line of stdout; mark the trial finished. Once only."""
        if self._result is not None:
            return self._result
        data = self.result(**extra)
        line = _line(data)
        if self.settings.result_file:
            # In place: on Kubernetes the file is the termination-message path, a mounted file
            # that a rename cannot replace.
            with open(self.settings.result_file, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
        self.metrics.finished.labels(**self.metrics.labels).set(1)
        out = self._out or sys.stdout
        out.write(line + "\n")
        out.flush()
        self._result = data
        return data

    # --- lifetime ------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._terminate = True

    def _say(self, text: str) -> None:
        print(f"{self.prog}: b={self.batch_size} seed={self.seed}: {text}", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        """Stop serving metrics and give SIGTERM back to its previous handler."""
        self.metrics.close()
        if self._previous_handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def __enter__(self) -> TrialReporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _line(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
