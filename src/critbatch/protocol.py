"""The trial protocol, version 1 (docs/trial-protocol.md): what any trainer is told and what it
must report, so that a sweep runs the user's own training code as well as critbatch's.

Pure: the variables' names, reading them, and checking a result; no I/O. The runner and the
operator set the variables (`critbatch.trainer_args.trial_env`), `critbatch.reporter` reads
them for user code, and the built-in trainer takes them as defaults for its flags.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from critbatch.errors import InputError
from critbatch.science import OPTIMIZERS, OptimizerSetting
from critbatch.vocabulary import Goal, TrialKey, reached

VERSION = 1
VERSION_VAR = "CRITBATCH_PROTOCOL"
BATCH_SIZE = "CRITBATCH_BATCH_SIZE"
SEED = "CRITBATCH_SEED"
TARGET_METRIC = "CRITBATCH_TARGET_METRIC"
TARGET_THRESHOLD = "CRITBATCH_TARGET_THRESHOLD"
TARGET_GOAL = "CRITBATCH_TARGET_GOAL"
MAX_STEPS = "CRITBATCH_MAX_STEPS"
METRICS_PORT = "CRITBATCH_METRICS_PORT"
METRICS_HOST = "CRITBATCH_METRICS_HOST"  # optional: the address to serve on (default all)
RESULT_FILE = "CRITBATCH_RESULT_FILE"
CHECKPOINT_DIR = "CRITBATCH_CHECKPOINT_DIR"
EVAL_EVERY = "CRITBATCH_EVAL_EVERY"  # optional: the sweep's evaluation interval
DATA_PATH = "CRITBATCH_DATA_PATH"  # optional: where spec.trainer.dataset is (a mounted claim)
SWEEP = "CRITBATCH_SWEEP"  # optional: the sweep's name, a label on every metric

REQUIRED_VARS = (BATCH_SIZE, SEED, TARGET_METRIC, TARGET_THRESHOLD, TARGET_GOAL, MAX_STEPS)
ALL_VARS = (VERSION_VAR, *REQUIRED_VARS, METRICS_PORT, METRICS_HOST, RESULT_FILE, CHECKPOINT_DIR,
            EVAL_EVERY, DATA_PATH, SWEEP)

DEFAULT_METRIC = "fid"
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,62}")
MAX_PATH = 4096
RESULT_REQUIRED = ("batch_size", "seed", "reached", "steps")


class ProtocolError(InputError):
    """Protocol input a trainer cannot run with; the message starts with the variable."""


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """One trial's settings as the protocol gives them."""

    batch_size: int
    seed: int
    max_steps: int
    threshold: float
    metric: str = DEFAULT_METRIC
    goal: Goal = Goal.minimize
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    result_file: str | None = None
    checkpoint_dir: str | None = None
    eval_every: int | None = None
    data_path: str | None = None
    sweep: str = "local"

    @property
    def key(self) -> TrialKey:
        return TrialKey(self.batch_size, self.seed)

    def reached(self, value: float | None) -> bool:
        """Whether `value` of the target metric meets the target."""
        return reached(value, self.threshold, self.goal)

    def env(self) -> dict[str, str]:
        """The variables that give a trainer these settings (the inverse of `from_env`)."""
        out = {
            VERSION_VAR: str(VERSION),
            BATCH_SIZE: str(self.batch_size),
            SEED: str(self.seed),
            TARGET_METRIC: self.metric,
            TARGET_THRESHOLD: repr(float(self.threshold)),
            TARGET_GOAL: self.goal.value,
            MAX_STEPS: str(self.max_steps),
            METRICS_PORT: str(self.metrics_port),
            METRICS_HOST: self.metrics_host,
            RESULT_FILE: self.result_file or "",
            CHECKPOINT_DIR: self.checkpoint_dir or "",
            DATA_PATH: self.data_path or "",
            SWEEP: self.sweep,
        }
        if self.eval_every is not None:
            out[EVAL_EVERY] = str(self.eval_every)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrialSettings:
        """The settings in `env`; a ProtocolError names the first variable missing or wrong."""
        version = env.get(VERSION_VAR, str(VERSION)).strip()
        if version != str(VERSION):
            raise ProtocolError(f"{VERSION_VAR}: this side speaks version {VERSION}, "
                                f"got {version[:20]!r}")
        missing = [v for v in REQUIRED_VARS if not env.get(v, "").strip()]
        if missing:
            raise ProtocolError(f"{missing[0]}: missing (a trial needs "
                                f"{', '.join(REQUIRED_VARS)})")
        metric = env[TARGET_METRIC].strip()
        if not METRIC_NAME.fullmatch(metric):
            raise ProtocolError(f"{TARGET_METRIC}: expected a name of letters, digits, _ . : -"
                                f" (at most 63), got {metric[:70]!r}")
        goal = env[TARGET_GOAL].strip()
        if goal not in Goal.__members__:
            raise ProtocolError(f"{TARGET_GOAL}: expected minimize or maximize, got "
                                f"{goal[:20]!r}")
        return cls(
            batch_size=_count(env, BATCH_SIZE, 1),
            seed=_count(env, SEED, 0),
            max_steps=_count(env, MAX_STEPS, 1),
            threshold=_finite(env, TARGET_THRESHOLD),
            metric=metric,
            goal=Goal(goal),
            metrics_port=_count(env, METRICS_PORT, 0, high=65535, default=0),
            metrics_host=_host(env),
            result_file=_path(env, RESULT_FILE),
            checkpoint_dir=_path(env, CHECKPOINT_DIR),
            eval_every=_count(env, EVAL_EVERY, 1, default=None),
            data_path=_path(env, DATA_PATH),
            sweep=(env.get(SWEEP) or "local").strip()[:253] or "local",
        )


def _count(env: Mapping[str, str], name: str, low: int, *, high: int | None = None,
           default: int | type[Ellipsis] | None = ...) -> Any:
    text = env.get(name, "").strip()
    if not text and default is not Ellipsis:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) < low \
            or (high is not None and int(text) > high):
        bound = f" and <= {high}" if high is not None else ""
        raise ProtocolError(f"{name}: expected an integer >= {low}{bound}, got {text[:20]!r}")
    return int(text)


def _finite(env: Mapping[str, str], name: str) -> float:
    text = env[name].strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or len(text) > 40:
        raise ProtocolError(f"{name}: expected a finite number, got {text[:40]!r}")
    return value


def _host(env: Mapping[str, str]) -> str:
    text = env.get(METRICS_HOST, "").strip() or "0.0.0.0"
    if len(text) > 253 or not re.fullmatch(r"[A-Za-z0-9_.:-]+", text):
        raise ProtocolError(f"{METRICS_HOST}: expected a host name or address, got {text[:40]!r}")
    return text


def _path(env: Mapping[str, str], name: str) -> str | None:
    text = env.get(name, "")
    if len(text) > MAX_PATH or "\0" in text:
        raise ProtocolError(f"{name}: not a usable path")
    return text or None


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------

# Optional keys and the types each may have when present. `fid` and `generator_params` are the
# built-in trainer's names for `value` and `params`.
RESULT_TYPES: dict[str, tuple[type, ...]] = {
    "sweep": (str,), "metric": (str,), "value": (int, float, type(None)),
    "interpolated_steps": (int, float, type(None)), "sfo": (int, float, type(None)),
    "fid": (int, float, type(None)), "threshold": (int, float, type(None)),
    "goal": (str,), "max_steps": (int, type(None)), "wall_seconds": (int, float, type(None)),
    "params": (int, type(None)), "generator_params": (int, type(None)),
    "dataset_size": (int, type(None)), "gradient_noise_scale": (int, float, type(None)),
    "optimizer": (dict, type(None)), "hardware": (dict, type(None)),
}


def result_problem(data: Any, key: TrialKey | None = None, *, sweep: str | None = None,
                   max_steps: int | None = None) -> str | None:
    """Why `data` is not a usable result (of trial `key` of sweep `sweep`), or None.

    Required: `batch_size` an integer >= 1, `seed` an integer >= 0, `reached` true or false,
    `steps` a finite number >= 0 (> 0 when reached, at most `max_steps`); optional keys with
    the types of RESULT_TYPES. A NaN or infinite value is unknown, never an error.
    """
    if not isinstance(data, dict):
        return "not a JSON object"
    for name in RESULT_REQUIRED:
        if name not in data:
            return f"{name}: missing (required: {', '.join(RESULT_REQUIRED)})"
    if not isinstance(data["reached"], bool):
        return f"reached: expected true or false, got {short_json(data['reached'])}"
    steps = data["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int | float):
        return f"steps: expected a number, got {short_json(steps)}"
    try:
        steps = float(steps)
    except OverflowError:
        return "steps: too large"
    if not math.isfinite(steps) or steps < 0:
        return f"steps: must be a finite number >= 0, got {short_json(data['steps'])}"
    if not _is_int(data["batch_size"]) or data["batch_size"] < 1:
        return f"batch_size: expected an integer >= 1, got {short_json(data['batch_size'])}"
    if not _is_int(data["seed"]) or data["seed"] < 0:
        return f"seed: expected an integer >= 0, got {short_json(data['seed'])}"
    for name, types in RESULT_TYPES.items():
        value = data.get(name)
        if name in data and (isinstance(value, bool) or not isinstance(value, types)):
            return (f"{name}: expected {' or '.join(map(type_name, types))}, got "
                    f"{short_json(value)}")
    if data["reached"] and steps == 0:
        return "steps: 0 for a trial that reached the target"
    if max_steps is not None and steps > max_steps:
        return f"steps {short_json(data['steps'])} above spec.target.maxSteps {max_steps}"
    if key is not None and (data["batch_size"], data["seed"]) != (key.batch_size, key.seed):
        return (f"batch size {data['batch_size']}, seed {data['seed']}: another trial's result "
                f"(this one is batch size {key.batch_size}, seed {key.seed})")
    if sweep is not None and "sweep" in data and data["sweep"] != sweep:
        return f"sweep {short_json(data['sweep'])}: another sweep's result (this is {sweep!r})"
    return None


def result_value(result: Mapping[str, Any]) -> float | None:
    """The target metric's last value (`value`, or the built-in trainer's `fid`), when finite."""
    value = result.get("value", result.get("fid"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def result_params(result: Mapping[str, Any]) -> int | None:
    """The trained network's parameter count Θ (`params`, or `generator_params`), when > 0."""
    value = result.get("params", result.get("generator_params"))
    return value if _is_int(value) and value > 0 else None


def result_dataset_size(result: Mapping[str, Any]) -> int | None:
    value = result.get("dataset_size")
    return value if _is_int(value) and value > 0 else None


def result_optimizer(result: Mapping[str, Any]) -> OptimizerSetting | str:
    """The reported optimizer as Proposition 3.4 needs it, or why it cannot be used."""
    o = result.get("optimizer")
    if not isinstance(o, dict):
        return "the trainer reports no optimizer"
    name = o.get("name")
    if name not in OPTIMIZERS:
        return (f"optimizer {short_json(name)}: Proposition 3.4 covers "
                f"{', '.join(OPTIMIZERS)} only")
    values = [o.get(k) for k in ("learning_rate", "beta1", "beta2")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in values) or not values[0] > 0 or not 0 <= values[1] < 1 \
            or not 0 < values[2] < 1:
        return ("optimizer: needs learning_rate > 0, 0 <= beta1 < 1 and 0 < beta2 < 1, got "
                + short_json(o))
    return OptimizerSetting(name, float(values[0]), float(values[1]), float(values[2]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def type_name(t: type) -> str:
    """How a problem names an expected type: `an integer`, `null`."""
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "an object", type(None): "null"}.get(t, t.__name__)


def short_json(value: Any) -> str:
    """`value` as JSON, cut to 40 characters: a quote in a one-line problem."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
