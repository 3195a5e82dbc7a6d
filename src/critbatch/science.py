"""The critical-batch-size science of docs/science.md, as pure functions over plain data.

No I/O, no clock, no torch: the trainer, the planner, the operator and the CLI all call in here,
so a number means the same thing wherever it is shown.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from critbatch.errors import InputError

OPTIMIZERS = ("adam", "adabelief", "rmsprop")
DEFAULT_GRID = tuple(2**k for k in range(17))

# The paper's learning rates (alpha_G, alpha_D) per model and optimizer (docs/science.md); BigGAN
# has only Adam's, which the other two optimizers borrow.
PAPER_LEARNING_RATES: dict[tuple[str, str], tuple[float, float]] = {
    ("dcgan", "adam"): (1e-4, 3e-4),
    ("dcgan", "adabelief"): (3e-4, 3e-5),
    ("dcgan", "rmsprop"): (1e-4, 3e-5),
    ("wgan-gp", "adam"): (1e-4, 3e-4),
    ("wgan-gp", "adabelief"): (5e-4, 3e-5),
    ("wgan-gp", "rmsprop"): (3e-4, 1e-4),
    ("biggan", "adam"): (1e-4, 4e-4),
    ("biggan", "adabelief"): (1e-4, 4e-4),
    ("biggan", "rmsprop"): (1e-4, 4e-4),
}


class ScienceError(InputError):
    """Input the science cannot take; the message names the offending field."""


@dataclass(frozen=True)
class Trial:
    """One training run: `steps` is N(b) when `reached`, else the steps done before it stopped."""

    batch_size: int
    steps: float
    reached: bool
    seed: int = 0

    def __post_init__(self) -> None:
        check_trial(self.batch_size, self.steps, self.reached)


def check_trial(batch_size: int, steps: float, reached: bool) -> None:
    """What every record of a finished trial must hold; the error names the field."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size:
        raise ScienceError(f"batch_size: must be an integer, got {batch_size!r}")
    if batch_size <= 0:
        raise ScienceError(f"batch_size: must be positive, got {batch_size}")
    if not math.isfinite(steps) or steps < 0:
        raise ScienceError(f"steps: must be a finite number >= 0, got {steps!r}")
    if reached and steps <= 0:
        raise ScienceError("steps: a trial that reached the target needs steps > 0")


def sfo(batch_size: float, steps: float) -> float:
    """Stochastic first-order oracle calls: samples whose gradient was computed, N(b)*b."""
    return float(batch_size) * float(steps)


def model_steps(batch_size: float, a: float, b: float, k: float) -> float:
    """N(b) = A*b / (K*b - B); infinite where b <= B/K (the target is out of reach)."""
    denom = k * batch_size - b
    return math.inf if denom <= 0 else a * batch_size / denom


def critical_batch_size(b: float, k: float) -> float:
    """b* = 2B/K, the minimiser of SFO(b) = A*b^2 / (K*b - B)."""
    return 2.0 * b / k


# ---------------------------------------------------------------------------------------------
# Measured b*
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SfoPoint:
    """Mean N(b) over the seeds that reached the target at one batch size, and its SFO."""

    batch_size: int
    steps: float
    sfo: float
    trials: int


@dataclass(frozen=True)
class Measurement:
    batch_size: int | None
    points: tuple[SfoPoint, ...]
    censored: tuple[int, ...]
    warnings: tuple[str, ...] = ()


def measure(trials: Iterable[Trial]) -> Measurement:
    """Measured b*: the grid point with the least SFO among batch sizes whose trials all reached.

    A batch size with any censored trial is left out of the argmin (its mean N would be biased
    low) and named in `censored`. A censored trial whose SFO lower bound is already below the
    best measured SFO could still have won; that is a warning, not a silent choice.
    """
    by_batch: dict[int, list[Trial]] = defaultdict(list)
    for t in trials:
        by_batch[t.batch_size].append(t)
    points: list[SfoPoint] = []
    censored: list[int] = []
    for bs in sorted(by_batch):
        group = by_batch[bs]
        if all(t.reached for t in group):
            mean_steps = float(np.mean([t.steps for t in group]))
            points.append(SfoPoint(bs, mean_steps, sfo(bs, mean_steps), len(group)))
        else:
            censored.append(bs)
    warnings: list[str] = []
    if censored:
        warnings.append(
            "target not reached at batch size(s) "
            + ", ".join(str(b) for b in censored)
            + ": censored, not used as measurements"
        )
    if not points:
        return Measurement(None, (), tuple(censored), tuple(warnings))
    best = min(points, key=lambda p: (p.sfo, p.batch_size))
    for bs in censored:
        bound = max(sfo(bs, t.steps) for t in by_batch[bs] if not t.reached)
        if bound < best.sfo:
            warnings.append(
                f"batch size {bs} stopped at SFO {bound:.6g} without reaching the target, "
                f"below the best measured SFO {best.sfo:.6g}: with a larger step budget "
                "it could still win"
            )
    return Measurement(best.batch_size, tuple(points), tuple(censored), tuple(warnings))


# ---------------------------------------------------------------------------------------------
# Proposition 3.4: the noise ratio and estimates for other settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSetting:
    """The generator optimizer's settings that enter Proposition 3.4."""

    optimizer: str
    lr: float
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ScienceError(
                f"optimizer: unknown {self.optimizer!r}, expected one of {', '.join(OPTIMIZERS)}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ScienceError(f"lr: must be > 0, got {self.lr!r}")
        for name, v in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not (math.isfinite(v) and 0 <= v < 1):
                raise ScienceError(f"{name}: must be in [0, 1), got {v!r}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ScienceError(f"{name}: must be > 0, got {value!r}")


def bound_denominator(setting: OptimizerSetting, params: int, dataset_size: int) -> float:
    """D of Proposition 3.4 for the generator's optimizer (Theta params, |S| examples)."""
    _positive("params", params)
    _positive("dataset_size", dataset_size)
    if setting.optimizer == "rmsprop":
        return math.sqrt(params) / dataset_size
    factor = 4.0 if setting.optimizer == "adabelief" else 1.0
    root = math.sqrt(factor * params / (1 - setting.beta2))
    return (1 - setting.beta1) ** 3 * root / dataset_size


def noise_ratio(
    reference: OptimizerSetting, batch_size: float, params: int, dataset_size: int
) -> float:
    """sigma^2/eps^3 back-calculated from a measured b* of a reference optimizer."""
    _positive("batch", batch_size)
    return batch_size * bound_denominator(reference, params, dataset_size) / reference.lr


def estimate_batch_size(
    ratio: float, target: OptimizerSetting, params: int, dataset_size: int
) -> float:
    """Proposition 3.4's b*_G for `target`, given the noise ratio of the same architecture."""
    _positive("noise_ratio", ratio)
    return ratio * target.lr / bound_denominator(target, params, dataset_size)


def snap_to_grid(value: float, grid: Sequence[int] = DEFAULT_GRID) -> int:
    """Nearest grid point by absolute difference; a tie goes to the smaller point. A value
    beyond an end of the grid (an infinite one too) is that end's point."""
    if not grid:
        raise ScienceError("grid: must not be empty")
    if math.isnan(value):
        raise ScienceError("batch_size: not a number (NaN), so no grid point is nearest")
    points = sorted(grid)
    if value >= points[-1]:
        return points[-1]
    if value <= points[0]:
        return points[0]
    return min(points, key=lambda g: (abs(g - value), g))


@dataclass(frozen=True)
class Estimate:
    setting: OptimizerSetting
    params: int
    dataset_size: int
    batch_size: float
    grid_batch_size: int
    interval: tuple[float, float] | None = None


def widen(interval: tuple[float, float], batch_size: float) -> tuple[float, float]:
    """An interval of a measured b* stretched to hold the b* Proposition 3.4 is given: a fit
    may put b* between grid points, outside the interval of the grid point measured."""
    return min(interval[0], batch_size), max(interval[1], batch_size)


def estimate_targets(
    reference: OptimizerSetting,
    reference_batch_size: float,
    params: int,
    dataset_size: int,
    targets: Sequence[tuple[OptimizerSetting, int | None, int | None]],
    grid: Sequence[int] = DEFAULT_GRID,
    reference_interval: tuple[float, float] | None = None,
) -> tuple[float, list[Estimate]]:
    """Noise ratio from the reference and an estimate per (setting, params, dataset_size) target.

    A target's params or dataset_size left as None takes the reference's. With an interval of
    the reference's b* each estimate gets the interval it maps to (each end's estimate).
    """
    ratio = noise_ratio(reference, reference_batch_size, params, dataset_size)
    ends = [noise_ratio(reference, b, params, dataset_size) for b in reference_interval or ()]
    out = []
    for setting, t_params, t_size in targets:
        tp = params if t_params is None else t_params
        ts = dataset_size if t_size is None else t_size
        value = estimate_batch_size(ratio, setting, tp, ts)
        span = tuple(estimate_batch_size(r, setting, tp, ts) for r in ends)
        out.append(Estimate(setting, tp, ts, value, snap_to_grid(value, grid), span or None))
    return ratio, out


# ---------------------------------------------------------------------------------------------
# Gradient noise scale (McCandlish et al. 2018)
# ---------------------------------------------------------------------------------------------


def noise_scale_terms(
    small_sq_norm: float, big_sq_norm: float, small_batch: float, big_batch: float
) -> tuple[float, float]:
    """Unbiased |G|^2 and tr(Sigma) from squared gradient norms at two batch sizes."""
    if not big_batch > small_batch > 0:
        raise ScienceError(
            f"big_batch: must exceed small_batch > 0, got {small_batch} and {big_batch}"
        )
    g2 = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
    trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch)
    return g2, trace


@dataclass
class GradientNoiseScale:
    """B_simple = tr(Sigma)/|G|^2 with numerator and denominator averaged separately (EMA).

    `decay` is the EMA's weight on the past; `value` is None until the averaged |G|^2 is
    positive (early noisy estimates can make it negative).
    """

    decay: float = 0.95
    _g2: float = field(default=0.0, init=False)
    _trace: float = field(default=0.0, init=False)
    _weight: float = field(default=0.0, init=False)

    def update(
        self, small_sq_norm: float, big_sq_norm: float, small_batch: float, big_batch: float
    ) -> float | None:
        g2, trace = noise_scale_terms(small_sq_norm, big_sq_norm, small_batch, big_batch)
        self._g2 = self.decay * self._g2 + (1 - self.decay) * g2
        self._trace = self.decay * self._trace + (1 - self.decay) * trace
        self._weight = self.decay * self._weight + (1 - self.decay)
        return self.value

    @property
    def value(self) -> float | None:
        if self._weight == 0 or self._g2 <= 0:
            return None
        return self._trace / self._g2

    def state_dict(self) -> dict[str, float]:
        return {"decay": self.decay, "g2": self._g2, "trace": self._trace, "weight": self._weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.decay = float(state["decay"])
        self._g2 = float(state["g2"])
        self._trace = float(state["trace"])
        self._weight = float(state["weight"])
