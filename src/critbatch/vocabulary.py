"""The names and rules that the sweep spec and the trainer must agree on, written once.

Both sides of the trainer boundary read this module: the spec, planner, operator and local
runner on one side, `critbatch_trainer` on the other (docs/contracts.md lets the trainer import
it). It is plain Python with no torch, so a rule changed here changes on both sides at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from critbatch.errors import InputError
from critbatch.science import OPTIMIZERS, PAPER_LEARNING_RATES

__all__ = [
    "DATASETS", "DEVICES", "EMA_MODELS", "EMBEDDED_DATASETS",
    "KNOWN_DATASET_SIZES", "MAX_TRIALS_PER_GROUP", "MODELS", "OPTIMIZERS", "Goal", "OptimizerSide",
    "TrialKey", "TrialsError", "attention_problem", "cuda_graph_problem",
    "default_attention_res", "default_channels", "default_eval_every", "default_eval_samples",
    "default_image_size", "default_width", "default_z_dim", "image_size_problem",
    "micro_batch_problem", "optimizer_defaults", "parse_trials", "reached", "recompute_problem",
    "trials_text", "z_dim_problem",
]

MODELS = ("dcgan", "wgan-gp", "biggan")
DATASETS = ("digits", "faces", "imagefolder", "lsun", "celeba")
EMBEDDED_DATASETS = ("digits", "faces")  # shipped with the package: no path, no Inception
KNOWN_DATASET_SIZES = {"digits": 1797}  # training examples of scikit-learn's 8x8 digits
DEVICES = ("auto", "cpu", "cuda")
EMA_MODELS = ("biggan",)  # models that keep an exponential moving average of the generator
# Trials sharing one process group (and one GPU): their result lines must fit one Kubernetes
# termination message of 4 KiB.
MAX_TRIALS_PER_GROUP = 8

BIGGAN_SIZES = (32, 64, 128)
# BigGAN splits z into one chunk for its first layer and one per up-sampling block.
_BIGGAN_Z_CHUNKS = {32: 4, 64: 5, 128: 6}

# The embedded digits demo is tuned so that a CPU sweep shows an interior SFO minimum
# (docs/trainer.md): with the paper's Adam rates the tiny network needs thousands of steps; at
# 1e-3 the small batches hit a noise floor above the demo's threshold.
_DIGITS_DCGAN_ADAM_RATES = (1e-3, 1e-3)


class Goal(StrEnum):
    """Which way a target metric improves: FID and losses fall, accuracies rise."""

    minimize = "minimize"
    maximize = "maximize"


def reached(value: float | None, threshold: float, goal: Goal | str = Goal.minimize) -> bool:
    """Whether `value` meets the target: at or below `threshold` when minimizing, at or above
    it when maximizing; an unknown or non-finite value never does."""
    if value is None or not math.isfinite(value):
        return False
    return value <= threshold if Goal(goal) is Goal.minimize else value >= threshold


@dataclass(frozen=True, order=True)
class TrialKey:
    """One trial of a sweep: a batch size and a seed."""

    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        """`b<batch>-s<seed>`: the trial's one spelling in directories, Job names and logs."""
        return f"b{self.batch_size}-s{self.seed}"


class TrialsError(InputError):
    """A `B:S,...` list of trials that cannot be run; the message starts with ``trials:``."""


def trials_text(keys: Sequence[TrialKey]) -> str:
    """`B:S,B:S,...`: how the trainer's `--trials` and a Job's annotation list a group's
    trials."""
    return ",".join(f"{k.batch_size}:{k.seed}" for k in keys)


def parse_trials(text: str, *, limit: int = MAX_TRIALS_PER_GROUP) -> list[TrialKey]:
    """The keys of `B:S,B:S,...` (the inverse of `trials_text`): 1 to `limit` distinct pairs
    of a batch size >= 1 and a seed >= 0."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise TrialsError(f"trials: expected batch_size:seed[,batch_size:seed...], "
                          f"got {text[:200]!r}")
    if len(items) > limit:
        raise TrialsError(f"trials: at most {limit} pairs, got {len(items)}")
    keys: list[TrialKey] = []
    for item in items:
        b, sep, s = item.partition(":")
        if not sep:
            raise TrialsError(f"trials: {item!r} is not batch_size:seed")
        key = TrialKey(_count(b, item, "batch size", 1), _count(s, item, "seed", 0))
        if key in keys:
            raise TrialsError(f"trials: {item!r} is given twice")
        keys.append(key)
    return keys


def _count(text: str, item: str, what: str, low: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) < low:
        raise TrialsError(f"trials: {item!r}: {what} must be an integer >= {low}")
    return int(text)


# ---------------------------------------------------------------------------------------------
# Defaults the trainer applies and the spec must predict
# ---------------------------------------------------------------------------------------------


def default_image_size(model: str, dataset: str) -> int:
    if dataset == "digits":
        return 16
    if dataset in EMBEDDED_DATASETS:
        return 32
    return 128 if model == "biggan" else 64


def default_channels(dataset: str) -> int:
    return 1 if dataset in EMBEDDED_DATASETS else 3


def default_width(model: str, dataset: str) -> int:
    """DCGAN's ngf = ndf, BigGAN's ch."""
    if model == "biggan":
        return 32
    return 16 if dataset == "digits" else 64


def default_z_dim(model: str, dataset: str) -> int:
    if model == "biggan":
        return 120
    return 32 if dataset == "digits" else 100


def default_eval_every(dataset: str) -> int:
    """Steps between FID evaluations: a reached trial crossed τ within the last interval."""
    return 20 if dataset == "digits" else 100


def default_eval_samples(dataset: str) -> int:
    return 500 if dataset == "digits" else 1000


def default_attention_res(model: str, image_size: int) -> int:
    """BigGAN's self-attention resolution (0: none)."""
    return {128: 64, 64: 32}.get(image_size, 0) if model == "biggan" else 0


@dataclass(frozen=True)
class OptimizerSide:
    """One network's optimizer settings; for RMSProp beta1 is the momentum and beta2 the
    smoothing constant."""

    learning_rate: float
    beta1: float
    beta2: float
    eps: float


def optimizer_defaults(model: str, optimizer: str,
                       dataset: str | None = None) -> tuple[OptimizerSide, OptimizerSide]:
    """(generator, discriminator) defaults: the paper's (docs/science.md), except the digits
    demo's DCGAN with Adam. Without a dataset, the paper's rates."""
    lr_g, lr_d = PAPER_LEARNING_RATES[(model, optimizer)]
    if dataset == "digits" and model == "dcgan" and optimizer == "adam":
        lr_g, lr_d = _DIGITS_DCGAN_ADAM_RATES
    if optimizer == "rmsprop":
        beta1, beta2, eps = 0.0, 0.99, 1e-8
    elif model == "biggan":
        beta1, beta2, eps = 0.0, 0.999, 1e-6
    else:
        beta1, beta2, eps = 0.5, 0.999, (1e-16 if optimizer == "adabelief" else 1e-8)
    return (OptimizerSide(lr_g, beta1, beta2, eps), OptimizerSide(lr_d, beta1, beta2, eps))


# ---------------------------------------------------------------------------------------------
# Rules: each returns what is wrong (to follow the field's name), or None
# ---------------------------------------------------------------------------------------------


def image_size_problem(model: str, size: int) -> str | None:
    if model == "biggan":
        return None if size in BIGGAN_SIZES else "biggan supports 32, 64 or 128"
    if size < 8 or size > 256 or size & (size - 1):
        return f"{model} needs a power of two from 8 to 256"
    return None


def z_dim_problem(model: str, image_size: int, z_dim: int) -> str | None:
    chunks = _BIGGAN_Z_CHUNKS.get(image_size) if model == "biggan" else None
    if chunks and z_dim % chunks:
        return f"biggan at {image_size}x{image_size} splits z into {chunks} equal chunks"
    return None


def micro_batch_problem(model: str) -> str | None:
    """Why this model's step cannot accumulate its gradients over micro-batches."""
    if model == "dcgan":
        return ("not with dcgan, whose step uses one fake batch for both updates and would "
                "have to keep it whole")
    return None


def recompute_problem(model: str) -> str | None:
    """Why this model's blocks cannot be recomputed in the backward pass."""
    if model != "biggan":
        return ("only biggan, whose blocks are recomputed; the other models' networks are "
                "small enough to keep their activations")
    return None


def attention_problem(model: str) -> str | None:
    """Why this model has no self-attention to fuse."""
    if model != "biggan":
        return "only biggan, the one model with self-attention"
    return None


def cuda_graph_problem(optimizer: str) -> str | None:
    """Why a training step with this optimizer cannot be replayed as a CUDA graph."""
    if optimizer == "adabelief":
        return ("not with adabelief, which counts its steps on the host: every replay would "
                "repeat the captured step's bias correction and step size; use adam or rmsprop")
    return None
