"""The trainer's configuration: one dataclass, parsed from a YAML/JSON file and/or flags.

Every flag is parsed as text and converted here, so a bad value fails with a message that
names its field (``batch-size: must be an integer >= 1, got 'x'``) and the CLI exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from critbatch.errors import InputError
from critbatch.science import PAPER_LEARNING_RATES

MODELS = ("dcgan", "wgan-gp", "biggan")
DATASETS = ("digits", "faces", "imagefolder", "lsun", "celeba")
EMBEDDED = ("digits", "faces")
OPTIMIZERS = ("adam", "adabelief", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
RESIDENT = ("auto", "on", "off")
GROUP_SIZE_ENV = "CRITBATCH_GROUP_SIZE"  # set for the children of a trial group
PROG = "critbatch-trainer"


class ConfigError(InputError):
    """Bad trainer configuration; the message starts with the flag name of the field."""


@dataclass(frozen=True)
class TrainerConfig:
    """One trial. None means "the default for this model/dataset/optimizer" (see `resolve`)."""

    batch_size: int
    fid_threshold: float
    max_steps: int
    model: str = "dcgan"
    dataset: str = "digits"
    data_path: str | None = None
    lsun_classes: str = "bedroom_train"
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    optimizer: str = "adam"
    lr_g: float | None = None
    lr_d: float | None = None
    beta1_g: float | None = None
    beta2_g: float | None = None
    eps_g: float | None = None
    beta1_d: float | None = None
    beta2_d: float | None = None
    eps_d: float | None = None
    eval_every: int | None = None
    eval_samples: int | None = None
    real_samples: int = 50000
    extractor: str = "auto"
    allow_download: bool = False
    stats_cache: str | None = None
    width: int | None = None
    z_dim: int | None = None
    n_critic: int = 1
    gp_lambda: float = 10.0
    ema_decay: float = 0.9999
    ema_start: int = 1000
    attention_res: int | None = None
    gns_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    linger: float = 0.0
    sweep: str = "local"
    termination_log: str | None = None
    device: str = "auto"
    threads: int | None = None
    workers: int = 2
    resident: str = "auto"
    cuda_graph: bool = False
    bf16: bool = False
    reproducible_cpu: bool = False

    @property
    def flag_names(self) -> list[str]:
        return [f.name for f in fields(self)]


# The embedded digits demo: tuned so a CPU sweep shows an interior SFO minimum (docs/trainer.md).
# With the paper's Adam rates (1e-4, 3e-4) the tiny net needs thousands of steps; at 1e-3 the
# small batches hit a noise floor above the demo threshold, which is what makes b* interior.
DIGITS_DEFAULTS: dict[str, Any] = {
    "lr_adam": (1e-3, 1e-3),
    "image_size": 16,
    "channels": 1,
    "width": 16,
    "z_dim": 32,
    "eval_every": 20,
    "eval_samples": 500,
}


def _betas_eps(model: str, optimizer: str) -> tuple[float, float, float]:
    """(beta1, beta2, eps); for RMSProp beta1 is momentum and beta2 the smoothing constant."""
    if optimizer == "rmsprop":
        return 0.0, 0.99, 1e-8
    if model == "biggan":
        return 0.0, 0.999, 1e-6
    return 0.5, 0.999, (1e-16 if optimizer == "adabelief" else 1e-8)


def default_threads() -> int | None:
    """Thread count from the environment (CRITBATCH_THREADS, then OMP_NUM_THREADS), else None."""
    for var in ("CRITBATCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def default_termination_log() -> str | None:
    """/dev/termination-log when it is writable (in a Kubernetes container), else none."""
    path = "/dev/termination-log"
    return path if os.path.isfile(path) and os.access(path, os.W_OK) else None


def resolve(cfg: TrainerConfig) -> TrainerConfig:
    """Fill every None with its default and validate; raises ConfigError naming the field."""
    _check_choice("model", cfg.model, MODELS)
    _check_choice("dataset", cfg.dataset, DATASETS)
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("resident", cfg.resident, RESIDENT)
    digits = cfg.dataset == "digits"
    if cfg.dataset in EMBEDDED:
        size_default, ch_default = (16, 1) if digits else (32, 1)
    else:
        size_default, ch_default = (128 if cfg.model == "biggan" else 64), 3
    if cfg.dataset not in EMBEDDED and not cfg.data_path:
        raise ConfigError(f"data-path: required for dataset {cfg.dataset!r}")
    lr_g, lr_d = PAPER_LEARNING_RATES[(cfg.model, cfg.optimizer)]
    if digits and cfg.model == "dcgan" and cfg.optimizer == "adam":
        lr_g, lr_d = DIGITS_DEFAULTS["lr_adam"]
    b1, b2, eps = _betas_eps(cfg.model, cfg.optimizer)
    width_default = 32 if cfg.model == "biggan" else 64
    z_default = 120 if cfg.model == "biggan" else 100
    if digits and cfg.model != "biggan":
        width_default, z_default = DIGITS_DEFAULTS["width"], DIGITS_DEFAULTS["z_dim"]
    image_size = cfg.image_size if cfg.image_size is not None else size_default
    attention = cfg.attention_res
    if attention is None:
        attention = {128: 64, 64: 32}.get(image_size, 0) if cfg.model == "biggan" else 0
    out = replace(
        cfg,
        image_size=image_size,
        channels=cfg.channels if cfg.channels is not None else ch_default,
        lr_g=_or(cfg.lr_g, lr_g),
        lr_d=_or(cfg.lr_d, lr_d),
        beta1_g=_or(cfg.beta1_g, b1),
        beta2_g=_or(cfg.beta2_g, b2),
        eps_g=_or(cfg.eps_g, eps),
        beta1_d=_or(cfg.beta1_d, b1),
        beta2_d=_or(cfg.beta2_d, b2),
        eps_d=_or(cfg.eps_d, eps),
        eval_every=_or(cfg.eval_every, DIGITS_DEFAULTS["eval_every"] if digits else 100),
        eval_samples=_or(cfg.eval_samples, DIGITS_DEFAULTS["eval_samples"] if digits else 1000),
        width=_or(cfg.width, width_default),
        z_dim=_or(cfg.z_dim, z_default),
        attention_res=attention,
        threads=_or(cfg.threads, default_threads()),
    )
    _validate(out)
    return out


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{_flag(name)}: unknown value {value!r}, expected one of {', '.join(choices)}"
        )


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _validate(c: TrainerConfig) -> None:
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{_flag(name)}: {what}, got {getattr(c, name)!r}")

    need(c.batch_size >= 1, "batch_size", "must be an integer >= 1")
    need(c.max_steps >= 1, "max_steps", "must be an integer >= 1")
    need(math.isfinite(c.fid_threshold) and c.fid_threshold > 0, "fid_threshold", "must be > 0")
    need(c.eval_every >= 1, "eval_every", "must be an integer >= 1")
    need(c.eval_samples >= 2, "eval_samples", "must be an integer >= 2")
    need(c.real_samples >= 2, "real_samples", "must be an integer >= 2")
    need(c.channels in (1, 3), "channels", "must be 1 or 3")
    size = c.image_size
    pow2 = size >= 1 and size & (size - 1) == 0
    if c.model == "biggan":
        need(size in (32, 64, 128), "image_size", "biggan supports 32, 64 or 128")
        need(c.attention_res == 0 or (c.attention_res in (8, 16, 32, 64, 128)
                                      and c.attention_res <= size),
             "attention_res", "must be 0 or a power of two from 8 to the image size")
    else:
        need(pow2 and 8 <= size <= 256, "image_size", "must be a power of two from 8 to 256")
    for name in ("lr_g", "lr_d", "eps_g", "eps_d", "gp_lambda"):
        v = getattr(c, name)
        need(math.isfinite(v) and v > 0, name, "must be > 0")
    for name in ("beta1_g", "beta2_g", "beta1_d", "beta2_d"):
        v = getattr(c, name)
        need(math.isfinite(v) and 0 <= v < 1, name, "must be in [0, 1)")
    need(c.width >= 1, "width", "must be an integer >= 1")
    need(c.z_dim >= 1, "z_dim", "must be an integer >= 1")
    if c.model == "biggan":
        blocks = {32: 3, 64: 4, 128: 5}[size]
        need(c.z_dim % (blocks + 1) == 0, "z_dim",
             f"biggan at {size}px splits z into {blocks + 1} equal chunks")
    need(c.n_critic >= 1, "n_critic", "must be an integer >= 1")
    need(0 <= c.ema_decay < 1, "ema_decay", "must be in [0, 1)")
    need(c.ema_start >= 0, "ema_start", "must be an integer >= 0")
    need(c.gns_every >= 0, "gns_every", "must be an integer >= 0 (0 = off)")
    need(c.checkpoint_every >= 0, "checkpoint_every", "must be an integer >= 0")
    need(0 <= c.metrics_port <= 65535, "metrics_port", "must be in 0..65535 (0 = off)")
    need(math.isfinite(c.linger) and c.linger >= 0, "linger", "must be >= 0 seconds")
    need(bool(c.sweep) and len(c.sweep) <= 253, "sweep", "must be a non-empty name")
    need(c.threads is None or c.threads >= 1, "threads", "must be an integer >= 1")
    need(c.workers >= 0, "workers", "must be an integer >= 0")
    need(not c.cuda_graph or c.model == "dcgan", "cuda_graph",
         "is implemented for dcgan only")
    ex = c.extractor
    need(ex in ("auto", "digits", "faces") or (ex.startswith("inception:") and len(ex) > 10),
         "extractor", "must be auto, digits, faces or inception:PATH")
    if ex == "auto" and c.dataset not in EMBEDDED:
        raise ConfigError(
            f"extractor: dataset {c.dataset!r} needs Inception weights: "
            "pass --extractor inception:PATH"
        )


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_INT = {"batch_size", "max_steps", "image_size", "channels", "seed", "eval_every",
        "eval_samples", "real_samples", "width", "z_dim", "n_critic", "ema_start",
        "attention_res", "gns_every", "checkpoint_every", "metrics_port", "threads", "workers"}
_FLOAT = {"fid_threshold", "lr_g", "lr_d", "beta1_g", "beta2_g", "eps_g", "beta1_d", "beta2_d",
          "eps_d", "gp_lambda", "ema_decay", "linger"}
_BOOL = {"allow_download", "cuda_graph", "bf16", "reproducible_cpu"}
_REQUIRED = ("batch_size", "fid_threshold", "max_steps")
_OPTIONAL_PATHS = {"data_path", "checkpoint_dir", "termination_log", "stats_cache"}


def _convert(name: str, value: Any) -> Any:
    flag = _flag(name)
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
    "cuda_graph": "replay each DCGAN step as one CUDA graph (cuda only; default off)",
    "bf16": "bfloat16 autocast in training steps; changes numerics, so N(b) (default off)",
    "reproducible_cpu": "pin the CPU numerics so a seed reaches the same N(b) on any x86-64 "
                        "CPU family; slower (default off)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _parser(names: list[str]) -> _Parser:
    p = _Parser(prog=PROG, add_help=True,
                description="Train one TTUR GAN trial until its FID reaches a threshold.",
                epilog="--trials B:S[,B:S...] instead of --batch-size/--seed runs 1 to 8 "
                       "trials as concurrent processes sharing this device (docs/trainer.md).")
    p.add_argument("--config", help="YAML or JSON file of flag names (with _ for -)")
    for name in names:
        if name in _BOOL:
            p.add_argument(f"--{_flag(name)}", dest=name, nargs="?", const="true", default=None,
                           metavar="BOOL", help=HELP.get(name))
        else:
            p.add_argument(f"--{_flag(name)}", dest=name, default=None, metavar="VALUE",
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
    names = [f.name for f in fields(TrainerConfig)]
    ns = _parser(names).parse_args(argv)
    return {name for name in names if getattr(ns, name) is not None}


def parse_args(argv: list[str] | None = None) -> TrainerConfig:
    """Flags over the --config file over the defaults, resolved and validated."""
    names = [f.name for f in fields(TrainerConfig)]
    ns = _parser(names).parse_args(argv)
    raw: dict[str, Any] = {}
    if ns.config:
        for key, value in load_file(ns.config).items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{key}: unknown setting in {ns.config}")
            raw[name] = value
    for name in names:
        value = getattr(ns, name)
        if value is not None:
            raw[name] = value
    values = {name: _convert(name, v) for name, v in raw.items()}
    values = {k: v for k, v in values.items() if v is not None or k in _OPTIONAL_PATHS}
    for name in _REQUIRED:
        if values.get(name) is None:
            raise ConfigError(f"{_flag(name)}: required")
    if "termination_log" not in values or values["termination_log"] is None:
        values["termination_log"] = default_termination_log()
    elif values["termination_log"] == "":
        values["termination_log"] = None
    return resolve(TrainerConfig(**values))


def to_json(cfg: TrainerConfig) -> str:
    """The resolved configuration, for logs and for checking a checkpoint belongs to this run."""
    return json.dumps({f.name: getattr(cfg, f.name) for f in fields(cfg)}, sort_keys=True)
