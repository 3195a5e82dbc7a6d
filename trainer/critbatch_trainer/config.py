"""The trainer's command line: flags and a YAML/JSON file parsed into a resolved TrainerConfig.

Every flag is parsed as text and converted here, so a bad value fails with a message that
names its field (``batch-size: must be an integer >= 1, got 'x'``) and the CLI exits 2.
The trial protocol's variables (`critbatch.protocol`, CRITBATCH_*) are the defaults of their
flags, so a sweep can run this trainer exactly as it runs a user's own: flags and the
--config file override them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from critbatch import protocol
from critbatch.vocabulary import MAX_TRIALS_PER_GROUP, Goal
from critbatch_trainer.resolve import default_termination_log, resolve
from critbatch_trainer.settings import (
    GROUP_SIZE_ENV,
    PROG,
    ConfigError,
    TrainerConfig,
    flag_name,
)

__all__ = ["FIELDS", "HELP", "PROTOCOL_FIELDS", "ConfigError", "TrainerConfig", "given_flags",
           "load_file", "parse_args", "protocol_defaults"]

FIELDS = tuple(f.name for f in fields(TrainerConfig))
_INT = {"batch_size", "max_steps", "image_size", "channels", "seed", "eval_every",
        "eval_samples", "real_samples", "width", "z_dim", "n_critic", "micro_batch", "ema_start",
        "attention_res", "gns_every", "checkpoint_every", "metrics_port", "threads", "workers"}
_FLOAT = {"fid_threshold", "lr_g", "lr_d", "beta1_g", "beta2_g", "eps_g", "beta1_d", "beta2_d",
          "eps_d", "gp_lambda", "ema_decay", "linger"}
_BOOL = {"allow_download", "cuda_graph", "recompute_activations", "fused_attention", "bf16",
         "reproducible_cpu"}
_REQUIRED = ("batch_size", "fid_threshold", "max_steps")
_OPTIONAL_PATHS = {"data_path", "checkpoint_dir", "termination_log", "stats_cache"}

# Protocol variable -> the field it is the default of.
PROTOCOL_FIELDS: dict[str, str] = {
    protocol.BATCH_SIZE: "batch_size",
    protocol.SEED: "seed",
    protocol.TARGET_THRESHOLD: "fid_threshold",
    protocol.MAX_STEPS: "max_steps",
    protocol.METRICS_PORT: "metrics_port",
    protocol.METRICS_HOST: "metrics_host",
    protocol.RESULT_FILE: "termination_log",
    protocol.CHECKPOINT_DIR: "checkpoint_dir",
    protocol.EVAL_EVERY: "eval_every",
    protocol.DATA_PATH: "data_path",
    protocol.SWEEP: "sweep",
}
# Fields whose protocol.TrialSettings attribute has another name.
_SETTING = {"fid_threshold": "threshold", "termination_log": "result_file"}
# A trial group's child is one of the group's trials: these variables describe the group (its
# port, its result file), and the group passes the child its own values as flags.
_GROUP_VARIABLES = (protocol.BATCH_SIZE, protocol.SEED, protocol.METRICS_PORT,
                    protocol.RESULT_FILE, protocol.CHECKPOINT_DIR)
# Stand-ins for the required variables that are not set, so that the protocol's own reader
# checks those that are; their values are never used.
_STAND_INS = {protocol.BATCH_SIZE: "1", protocol.SEED: "0", protocol.TARGET_METRIC: "fid",
              protocol.TARGET_THRESHOLD: "1", protocol.TARGET_GOAL: "minimize",
              protocol.MAX_STEPS: "1"}


def _convert(name: str, value: Any) -> Any:
    flag = flag_name(name)
    if value is None:
        return None
    if name in _BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{flag}: must be true or false, got {value!r}")
    if name in _INT:
        if isinstance(value, bool):
            raise ConfigError(f"{flag}: must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{flag}: must be an integer, got {value!r}") from None
    if name in _FLOAT:
        if isinstance(value, bool):
            raise ConfigError(f"{flag}: must be a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag}: must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{flag}: must be a finite number, got {value!r}")
        return out
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{flag}: must be a string, got {value!r}")
    text = str(value)
    if name in _OPTIONAL_PATHS and text == "":
        return "" if name == "termination_log" else None
    return text


HELP: dict[str, str] = {
    "batch_size": "batch size b (required)",
    "fid_threshold": "FID threshold tau (required)",
    "max_steps": "step budget; ending it without tau is censored (required)",
    "model": "dcgan | wgan-gp | biggan (default dcgan)",
    "dataset": "digits | faces | imagefolder | lsun | celeba (default digits)",
    "data_path": "root of a real dataset",
    "lsun_classes": "LSUN categories, comma-separated (default bedroom_train)",
    "image_size": "output resolution (default: digits 16, faces 32, real 64, biggan 128)",
    "channels": "1 or 3 (default: 1 for embedded sets, 3 for real ones)",
    "seed": "seed of initialisation, noise and data order (default 0)",
    "optimizer": "adam | adabelief | rmsprop (default adam)",
    "lr_g": "generator learning rate (default: the paper's per optimizer)",
    "lr_d": "discriminator learning rate (default: the paper's per optimizer)",
    "beta1_g": "generator beta1 (RMSProp: momentum)",
    "beta2_g": "generator beta2 (RMSProp: smoothing)",
    "eps_g": "generator eps",
    "beta1_d": "discriminator beta1 (RMSProp: momentum)",
    "beta2_d": "discriminator beta2 (RMSProp: smoothing)",
    "eps_d": "discriminator eps",
    "eval_every": "steps between FID evaluations (default: digits 20, else 100)",
    "eval_samples": "generated samples per evaluation (default: digits 500, else 1000)",
    "real_samples": "real images for the reference statistics (default 50000)",
    "extractor": "auto | digits | faces | inception:PATH (default auto)",
    "allow_download": "let inception:PATH download the weights when PATH is missing",
    "stats_cache": "cache directory of real statistics",
    "width": "network width (default: digits 16, dcgan 64, biggan 32)",
    "z_dim": "latent size (default: digits 32, dcgan 100, biggan 120)",
    "n_critic": "discriminator steps per generator step (default 1)",
    "micro_batch": "at most this many samples per forward and backward pass: a larger batch "
                   "accumulates its gradients over micro-batches (wgan-gp, biggan; default 0, "
                   "the whole batch at once)",
    "gp_lambda": "WGAN-GP penalty weight (default 10)",
    "ema_decay": "BigGAN generator EMA decay (default 0.9999)",
    "ema_start": "step where the EMA starts averaging (default 1000)",
    "attention_res": "BigGAN self-attention resolution, 0 = none",
    "gns_every": "steps between gradient-noise-scale measurements, 0 = off (default 10)",
    "checkpoint_dir": "directory to checkpoint to and resume from",
    "checkpoint_every": "steps between checkpoints, 0 = only on SIGTERM and at the end",
    "metrics_port": "Prometheus port, 0 = off (default 0)",
    "metrics_host": "Prometheus address (default 0.0.0.0)",
    "linger": "seconds to keep serving metrics after the end (default 0)",
    "sweep": "sweep name, a label on every metric (default local)",
    "termination_log": "result file, '' = none (default /dev/termination-log if writable)",
    "device": "auto | cpu | cuda (default auto)",
    "threads": "torch CPU threads (default CRITBATCH_THREADS or OMP_NUM_THREADS)",
    "workers": "data-loader processes for real datasets (default 2)",
    "resident": "auto | on | off: decode a real dataset once and keep it as uint8 on the "
                "device (auto: on cuda when it fits a quarter of the free memory)",
    "cuda_graph": "replay each step as one CUDA graph (cuda only; default off)",
    "recompute_activations": "keep only each network block's input in the forward pass and "
                             "recompute the block in the backward: less memory for about one "
                             "more forward pass, same training (biggan; default off)",
    "fused_attention": "self-attention by fused kernels that never hold its score matrix: "
                       "less memory (most with --recompute-activations) and faster; changes "
                       "rounding only (biggan; default off)",
    "bf16": "bfloat16 autocast in training steps; changes numerics, so N(b) (default off)",
    "reproducible_cpu": "pin the CPU numerics so a seed reaches the same N(b) on any x86-64 "
                        "CPU family; slower (default off)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _parser() -> _Parser:
    p = _Parser(prog=PROG, add_help=True,
                description="Train one TTUR GAN trial until its FID reaches a threshold.",
                epilog=f"--trials B:S[,B:S...] instead of --batch-size/--seed runs 1 to "
                       f"{MAX_TRIALS_PER_GROUP} trials as concurrent processes sharing this "
                       "device (docs/trainer.md).")
    p.add_argument("--config", help="YAML or JSON file of flag names (with _ for -)")
    for name in FIELDS:
        if name in _BOOL:
            p.add_argument(f"--{flag_name(name)}", dest=name, nargs="?", const="true",
                           default=None, metavar="BOOL", help=HELP.get(name))
        else:
            p.add_argument(f"--{flag_name(name)}", dest=name, default=None, metavar="VALUE",
                           help=HELP.get(name))
    return p


def load_file(path: str) -> dict[str, Any]:
    """The --config mapping (YAML is a superset of JSON)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of flag names to values")
    return data


def given_flags(argv: list[str]) -> set[str]:
    """Settings set by flags in argv (not by --config): what a trial group may not override."""
    ns = _parser().parse_args(argv)
    return {name for name in FIELDS if getattr(ns, name) is not None}


def protocol_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """The fields the protocol variables set in `env` give (read by the protocol's rules);
    ConfigError naming the variable when one is malformed or asks what this trainer cannot do.

    An empty variable is not set. In a trial group's child the group's own variables are not
    the child's (`_GROUP_VARIABLES`).
    """
    ignored = _GROUP_VARIABLES if env.get(GROUP_SIZE_ENV) else ()
    given = {name: env[name] for name in protocol.ALL_VARS
             if name not in ignored and env.get(name, "").strip()}
    if not given:
        return {}
    try:
        settings = protocol.TrialSettings.from_env({**_STAND_INS, **given})
    except protocol.ProtocolError as e:
        raise ConfigError(str(e)) from None
    if protocol.TARGET_METRIC in given and settings.metric != protocol.DEFAULT_METRIC:
        raise ConfigError(f"{protocol.TARGET_METRIC}: the built-in trainer measures "
                          f"{protocol.DEFAULT_METRIC}, got {settings.metric!r}")
    if protocol.TARGET_GOAL in given and settings.goal is not Goal.minimize:
        raise ConfigError(f"{protocol.TARGET_GOAL}: the built-in trainer's FID is minimized, "
                          f"got {settings.goal.value!r}")
    return {field: getattr(settings, _SETTING.get(field, field))
            for name, field in PROTOCOL_FIELDS.items() if name in given}


def parse_args(argv: list[str] | None = None,
               env: Mapping[str, str] | None = None) -> TrainerConfig:
    """Flags over the --config file over the protocol variables in `env` (default: this
    process's environment) over the defaults, resolved and validated."""
    ns = _parser().parse_args(argv)
    raw: dict[str, Any] = protocol_defaults(os.environ if env is None else env)
    from_env = {field: name for name, field in PROTOCOL_FIELDS.items() if field in raw}
    if ns.config:
        for key, value in load_file(ns.config).items():
            name = str(key).replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"{key}: unknown setting in {ns.config}")
            raw[name] = value
            from_env.pop(name, None)
    for name in FIELDS:
        value = getattr(ns, name)
        if value is not None:
            raw[name] = value
            from_env.pop(name, None)
    values = {name: _convert(name, v) for name, v in raw.items()}
    values = {k: v for k, v in values.items() if v is not None or k in _OPTIONAL_PATHS}
    for name in _REQUIRED:
        if values.get(name) is None:
            variable = next(v for v, f in PROTOCOL_FIELDS.items() if f == name)
            raise ConfigError(f"{flag_name(name)}: required (or {variable})")
    if "termination_log" not in values or values["termination_log"] is None:
        values["termination_log"] = default_termination_log()
    elif values["termination_log"] == "":
        values["termination_log"] = None
    try:
        return resolve(TrainerConfig(**values))
    except ConfigError as e:
        field, sep, what = str(e).partition(":")
        name = field.replace("-", "_")
        if sep and name in from_env:
            raise ConfigError(f"{from_env[name]} (--{field}):{what}") from None
        raise
