"""The critical-batch-size science of SCIENCE.md, as pure functions over plain data.

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

# The paper's learning rates (alpha_G, alpha_D) per model and optimizer (SCIENCE.md); BigGAN
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
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size:
            raise ScienceError(f"batch_size: must be an integer, got {self.batch_size!r}")
        if self.batch_size <= 0:
            raise ScienceError(f"batch_size: must be positive, got {self.batch_size}")
        if not math.isfinite(self.steps) or self.steps < 0:
            raise ScienceError(f"steps: must be a finite number >= 0, got {self.steps!r}")
        if self.reached and self.steps <= 0:
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
# Fitted b*
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """The model 1/N = p + q/b fitted to reached trials, or the reason it is not identifiable."""

    batch_size: float | None
    n_min: float | None
    p: float | None
    q: float | None
    interval: tuple[float, float] | None = None
    reason: str | None = None
    points: int = 0

    @property
    def identifiable(self) -> bool:
        return self.batch_size is not None

    def steps(self, batch_size: float) -> float:
        """Fitted N(b); infinite where the model says the target is out of reach."""
        if self.p is None or self.q is None:
            raise ScienceError("fit: not identifiable, no fitted curve")
        inv = self.p + self.q / batch_size
        return math.inf if inv <= 0 else 1.0 / inv


def _wls_lines(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fit: weighted least squares of y = 1/N on x = 1/b, one line per row of `n`.

    The noise is in N, not in 1/N: var(1/N) ~ var(N)/N^4, so with noise proportional to N
    the weights are N^2. That is the first-order form of least squares on log N, which the
    bootstrap's coverage cannot tell apart from the full nonlinear fit, in closed form and
    vectorised over the rows (a bootstrap refits all its resamples at once).
    """
    if np.ptp(x) <= 0:
        raise ScienceError("fit: needs at least two distinct batch sizes")
    y = 1.0 / n
    w = n**2
    sw = w.sum(axis=1, keepdims=True)
    xm = (w * x).sum(axis=1, keepdims=True) / sw
    ym = (w * y).sum(axis=1, keepdims=True) / sw
    q = (w * (x - xm) * (y - ym)).sum(axis=1) / (w * (x - xm) ** 2).sum(axis=1)
    return ym[:, 0] - q * xm[:, 0], q


def _fit_once(x: np.ndarray, n: np.ndarray) -> tuple[float, float, str | None]:
    ps, qs = _wls_lines(x, n[None, :])
    p, q = float(ps[0]), float(qs[0])
    if p <= 0:
        return p, q, (
            f"fit: intercept p = 1/N_min = {p:.3g} <= 0: N(b) does not level off with larger "
            "batches on this grid, so the model N(b) = A*b/(K*b - B) does not hold"
        )
    if q >= 0:
        return p, q, (
            f"fit: slope q = -B/A = {q:.3g} >= 0: N(b) does not fall with larger batches, so the "
            "model N(b) = A*b/(K*b - B) does not hold"
        )
    if np.any(p + q * x <= 0):
        smallest = round(1.0 / float(x.max()))
        return p, q, (
            f"fit: the fitted line puts batch size {smallest} at or below B/K, where the target "
            "is out of reach, although a trial there reached it"
        )
    return p, q, None


def fit(
    trials: Iterable[Trial],
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | int | None = 0,
) -> Fit:
    """Fit N(b) = A*b/(K*b - B) to the trials that reached the target; b*_fit = -2q/p.

    Censored trials are not measurements and are left out. With repeats (more reached trials
    than distinct batch sizes) the interval is a residual bootstrap on log N: residuals of the
    fit, rescaled by sqrt(n/(n-2)) for the two fitted parameters, resampled and added back.
    """
    reached = [t for t in trials if t.reached]
    if len({t.batch_size for t in reached}) < 2:
        return Fit(None, None, None, None, reason=(
            "fit: needs trials that reached the target at two or more batch sizes, "
            f"got {len({t.batch_size for t in reached})}"
        ), points=len(reached))
    x = np.array([1.0 / t.batch_size for t in reached])
    n = np.array([float(t.steps) for t in reached])
    p, q, reason = _fit_once(x, n)
    if reason:
        return Fit(None, None, p, q, reason=reason, points=len(reached))
    b_star = -2.0 * q / p
    interval = None
    repeats = len(reached) > len(set(x.tolist()))
    if repeats and bootstrap > 0:
        interval = _bootstrap_interval(x, n, p, q, bootstrap, confidence, rng)
    return Fit(b_star, 1.0 / p, p, q, interval=interval, points=len(reached))


def _bootstrap_interval(
    x: np.ndarray,
    n: np.ndarray,
    p: float,
    q: float,
    rounds: int,
    confidence: float,
    rng: np.random.Generator | int | None,
) -> tuple[float, float] | None:
    gen = np.random.default_rng(rng)
    fitted_log = -np.log(p + q * x)
    resid = np.log(n) - fitted_log
    dof = len(n) - 2
    if dof <= 0:
        return None
    resid = (resid - resid.mean()) * math.sqrt(len(n) / dof)
    samples = np.exp(fitted_log + resid[gen.integers(0, len(n), size=(rounds, len(n)))])
    bp, bq = _wls_lines(x, samples)
    # The rounds that _fit_once would call identifiable.
    good = (bp > 0) & (bq < 0) & np.all(bp[:, None] + bq[:, None] * x > 0, axis=1)
    stars = -2.0 * bq[good] / bp[good]
    if len(stars) < rounds / 2:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stars, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


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
    """Nearest grid point by absolute difference; a tie goes to the smaller point."""
    if not grid:
        raise ScienceError("grid: must not be empty")
    return min(sorted(grid), key=lambda g: (abs(g - value), g))


@dataclass(frozen=True)
class Estimate:
    setting: OptimizerSetting
    params: int
    dataset_size: int
    batch_size: float
    grid_batch_size: int


def estimate_targets(
    reference: OptimizerSetting,
    reference_batch_size: float,
    params: int,
    dataset_size: int,
    targets: Sequence[tuple[OptimizerSetting, int | None, int | None]],
    grid: Sequence[int] = DEFAULT_GRID,
) -> tuple[float, list[Estimate]]:
    """Noise ratio from the reference and an estimate per (setting, params, dataset_size) target.

    A target's params or dataset_size left as None takes the reference's.
    """
    ratio = noise_ratio(reference, reference_batch_size, params, dataset_size)
    out = []
    for setting, t_params, t_size in targets:
        tp = params if t_params is None else t_params
        ts = dataset_size if t_size is None else t_size
        value = estimate_batch_size(ratio, setting, tp, ts)
        out.append(Estimate(setting, tp, ts, value, snap_to_grid(value, grid)))
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
