"""Every unset setting of a trial gets its default, then every setting is checked.

The defaults and the rules the sweep spec must predict come from `critbatch.vocabulary`, so a
manifest and the trainer cannot disagree on them; the rest are the trainer's own.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import TypeVar

from critbatch.vocabulary import (
    DATASETS,
    DEVICES,
    EMBEDDED_DATASETS,
    MODELS,
    OPTIMIZERS,
    attention_problem,
    cuda_graph_problem,
    default_attention_res,
    default_channels,
    default_eval_every,
    default_eval_samples,
    default_image_size,
    default_width,
    default_z_dim,
    image_size_problem,
    micro_batch_problem,
    optimizer_defaults,
    recompute_problem,
    z_dim_problem,
)
from critbatch_trainer.settings import ConfigError, Resident, TrainerConfig, flag_name

T = TypeVar("T")
ATTENTION_SIZES = (8, 16, 32, 64, 128)


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
    _check_choice("resident", cfg.resident, tuple(Resident))
    if cfg.dataset not in EMBEDDED_DATASETS and not cfg.data_path:
        raise ConfigError(f"data-path: required for dataset {cfg.dataset!r}")
    model, dataset = cfg.model, cfg.dataset
    g, d = optimizer_defaults(model, cfg.optimizer, dataset)
    image_size = _or(cfg.image_size, default_image_size(model, dataset))
    out = replace(
        cfg,
        image_size=image_size,
        channels=_or(cfg.channels, default_channels(dataset)),
        lr_g=_or(cfg.lr_g, g.learning_rate),
        lr_d=_or(cfg.lr_d, d.learning_rate),
        beta1_g=_or(cfg.beta1_g, g.beta1),
        beta2_g=_or(cfg.beta2_g, g.beta2),
        eps_g=_or(cfg.eps_g, g.eps),
        beta1_d=_or(cfg.beta1_d, d.beta1),
        beta2_d=_or(cfg.beta2_d, d.beta2),
        eps_d=_or(cfg.eps_d, d.eps),
        eval_every=_or(cfg.eval_every, default_eval_every(dataset)),
        eval_samples=_or(cfg.eval_samples, default_eval_samples(dataset)),
        width=_or(cfg.width, default_width(model, dataset)),
        z_dim=_or(cfg.z_dim, default_z_dim(model, dataset)),
        attention_res=_or(cfg.attention_res, default_attention_res(model, image_size)),
        threads=_or(cfg.threads, default_threads()),
        resident=Resident(cfg.resident),
    )
    _validate(out)
    return out


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{flag_name(name)}: unknown value {value!r}, expected one of {', '.join(choices)}"
        )


def _validate(c: TrainerConfig) -> None:
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{flag_name(name)}: {what}, got {getattr(c, name)!r}")

    def rule(name: str, problem: str | None) -> None:
        need(problem is None, name, problem or "")

    need(c.batch_size >= 1, "batch_size", "must be an integer >= 1")
    need(c.max_steps >= 1, "max_steps", "must be an integer >= 1")
    need(math.isfinite(c.fid_threshold) and c.fid_threshold > 0, "fid_threshold", "must be > 0")
    need(c.eval_every >= 1, "eval_every", "must be an integer >= 1")
    need(c.eval_samples >= 2, "eval_samples", "must be an integer >= 2")
    need(c.real_samples >= 2, "real_samples", "must be an integer >= 2")
    need(c.channels in (1, 3), "channels", "must be 1 or 3")
    rule("image_size", image_size_problem(c.model, c.image_size))
    if c.model == "biggan":  # the only model with self-attention
        need(c.attention_res == 0 or (c.attention_res in ATTENTION_SIZES
                                      and c.attention_res <= c.image_size),
             "attention_res", "must be 0 or a power of two from 8 to the image size")
    for name in ("lr_g", "lr_d", "eps_g", "eps_d", "gp_lambda"):
        v = getattr(c, name)
        need(math.isfinite(v) and v > 0, name, "must be > 0")
    for name in ("beta1_g", "beta2_g", "beta1_d", "beta2_d"):
        v = getattr(c, name)
        need(math.isfinite(v) and 0 <= v < 1, name, "must be in [0, 1)")
    need(c.width >= 1, "width", "must be an integer >= 1")
    need(c.z_dim >= 1, "z_dim", "must be an integer >= 1")
    rule("z_dim", z_dim_problem(c.model, c.image_size, c.z_dim))
    need(c.n_critic >= 1, "n_critic", "must be an integer >= 1")
    need(c.micro_batch >= 0, "micro_batch", "must be an integer >= 0 (0 = the whole batch)")
    if c.micro_batch:
        rule("micro_batch", micro_batch_problem(c.model))
    if c.recompute_activations:
        rule("recompute_activations", recompute_problem(c.model))
    if c.fused_attention:
        rule("fused_attention", attention_problem(c.model))
    need(0 <= c.ema_decay < 1, "ema_decay", "must be in [0, 1)")
    need(c.ema_start >= 0, "ema_start", "must be an integer >= 0")
    need(c.gns_every >= 0, "gns_every", "must be an integer >= 0 (0 = off)")
    need(c.checkpoint_every >= 0, "checkpoint_every", "must be an integer >= 0")
    need(0 <= c.metrics_port <= 65535, "metrics_port", "must be in 0..65535 (0 = off)")
    need(math.isfinite(c.linger) and c.linger >= 0, "linger", "must be >= 0 seconds")
    need(bool(c.sweep) and len(c.sweep) <= 253, "sweep", "must be a non-empty name")
    need(c.threads is None or c.threads >= 1, "threads", "must be an integer >= 1")
    need(c.workers >= 0, "workers", "must be an integer >= 0")
    if c.cuda_graph and (problem := cuda_graph_problem(c.optimizer)):
        raise ConfigError(f"cuda-graph: {problem}")
    _validate_extractor(c.extractor, c.dataset)


def _validate_extractor(extractor: str, dataset: str) -> None:
    named = extractor in ("auto", *EMBEDDED_DATASETS)
    if not named and not (extractor.startswith("inception:") and len(extractor) > 10):
        raise ConfigError(f"extractor: must be auto, digits, faces or inception:PATH, "
                          f"got {extractor!r}")
    if extractor == "auto" and dataset not in EMBEDDED_DATASETS:
        raise ConfigError(
            f"extractor: dataset {dataset!r} needs Inception weights: "
            "pass --extractor inception:PATH"
        )
