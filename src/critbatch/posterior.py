"""Which tested batch size minimises SFO, as a posterior that counts censored trials.

The model is science's N(b) = A*b/(K*b - B), reparametrised as N(b) = n_min*b/(b - beta)
(n_min = A/K, beta = B/K, b* = 2*beta), with lognormal seed-to-seed noise of sd sigma on
log N and a per-seed stall probability. beta, sigma and the stall rate live on fixed grids and
log n_min is integrated out per cell, so the posterior is a sum over cells: exact enough, fast,
and free of a sampler's randomness (the cells' likelihood is `critbatch.likelihood`'s). Pure
numpy (the operator's image has no scipy), no I/O.

A trial that reached the target tau says N(b) lies in (steps - eval_every, steps]; one that did
not (out of budget, pruned, still running) says N(b) > steps, or that the seed stalled. Neither
kind is dropped: a censored seed beside a reached sibling is evidence about both.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from critbatch.likelihood import distinct_trials, log_posterior, make_cells, n_min_grid
from critbatch.logspace import logsumexp
from critbatch.science import ScienceError, check_trial

BETA_PER_OCTAVE = 8
BETA_BELOW = 4.0  # beta from the smallest batch size / BETA_BELOW ...
BETA_ABOVE = 2.0  # ... to the largest * BETA_ABOVE
N_MIN_POINTS = 15  # log n_min quadrature points per (beta, sigma) cell
N_MIN_HALF_WIDTH = 4.5  # in standard errors of log n_min
COARSE_POINTS = 5
COARSE_HALF_WIDTH = 4.0
PRUNE_NATS = 20.0  # cells this far below the best in the coarse pass carry no weight


@dataclass(frozen=True)
class Evidence:
    """What one trial says about its N(b).

    `reached`: the first evaluation at or below tau was at `steps`, so N(b) lies in
    (steps - eval_every, steps] (eval_every = 0: N(b) = steps exactly). Otherwise N(b) > steps,
    or the seed stalled.
    """

    batch_size: int
    steps: float
    reached: bool
    eval_every: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_trial(self.batch_size, self.steps, self.reached)
        if not math.isfinite(self.eval_every) or self.eval_every < 0:
            raise ScienceError(
                f"eval_every: must be a finite number >= 0, got {self.eval_every!r}")


@dataclass(frozen=True, kw_only=True)
class Posterior:
    """The answer: P(each grid point is the SFO argmin), b*'s posterior, and what is unknown.

    With no trial that reached the target there is no answer (`reason` says why):
    `probabilities` is empty and `most_probable`, `fitted`, `interval`, `n_min` are None. When
    the reached trials contradict the model, `reason` says so and there is no fitted b*.
    """

    grid: tuple[int, ...]
    probabilities: Mapping[int, float]
    most_probable: int | None
    plausible: tuple[int, ...]
    confidence: float
    resolved: bool
    fitted: float | None
    interval: tuple[float, float] | None
    n_min: float | None
    reach_fraction: Mapping[int, float]
    unreachable: Mapping[int, float]
    reason: str | None = None

    def sample_argmins(self, rng: np.random.Generator, n: int) -> list[int]:
        """Argmins of n cells drawn from the posterior (Thompson sampling); [] with no answer.

        A cell's argmin depends on beta alone, so this draws from `probabilities`.
        """
        if not self.probabilities or n <= 0:
            return []
        points = sorted(self.probabilities)
        weights = np.array([self.probabilities[g] for g in points])
        picks = rng.choice(len(points), size=n, p=weights / weights.sum())
        return [points[i] for i in picks]


def grid_argmin(beta: float, grid: Sequence[int]) -> int | None:
    """The grid point the model's SFO ~ g^2/(g - beta) is least at; None if every g <= beta.

    Depends on beta only; on a powers-of-two grid g wins for b* = 2*beta in [2g/3, 4g/3). A tie
    goes to the larger batch size: the same SFO in fewer steps.
    """
    best: int | None = None
    best_cost = math.inf
    for g in sorted(set(grid)):
        if g > beta:
            cost = g * g / (g - beta)
            if cost <= best_cost:
                best, best_cost = g, cost
    return best


def infer(
    evidence: Sequence[Evidence],
    grid: Sequence[int],
    *,
    confidence: float = 0.95,
    interval_level: float = 0.95,
) -> Posterior:
    """The posterior over the model's parameters given every trial, reached or censored.

    Priors (each weak, scaled by the grid where it has a scale):
    - beta: log-uniform from the smallest batch size / 4 to twice the largest (8 cells per
      octave), plus one cell at the limit beta = 0 (N flat in b). On a powers-of-two grid that
      gives every interior grid point the same prior chance to be the argmin (one octave of
      beta each) and the two edge points about 1.5 times that.
    - log n_min: flat (scale-free), integrated out per (beta, sigma) on 15 points spanning
      +-4.5 standard errors around where the reached trials put it (a coarse 5-point pass
      first drops cells more than 20 nats below the best; with no reached trial, flat from 1
      step to 100 times the longest trial).
    - sigma: lognormal around 0.2 (log-sd 0.75) on 12 points from 0.03 to 1.0: seed-to-seed
      spread of N is 10-30 % in practice, and with one seed per batch size a flat prior would
      believe a lucky near-perfect fit.
    - stall: P(a seed never reaches tau) in {0, 0.1, 0.25, 0.5} with prior
      {0.55, 0.2, 0.15, 0.1}. Without it, one stalled seed beside a reached sibling could only
      be explained by b <= beta or huge noise, and would drag b* up; a sweep-wide rate is the
      least it takes, and the prior still favours none.

    Memoised on (evidence, grid, levels): the planner asks again on every reconcile.
    """
    if not 0.0 < confidence < 1.0:
        raise ScienceError(f"confidence: must be in (0, 1), got {confidence!r}")
    if not 0.0 < interval_level < 1.0:
        raise ScienceError(f"interval_level: must be in (0, 1), got {interval_level!r}")
    points = _grid(grid)
    for e in evidence:
        if not isinstance(e, Evidence):
            raise ScienceError(f"evidence: expected Evidence, got {type(e).__name__}")
    key = tuple(sorted(evidence, key=lambda e: (e.batch_size, e.seed, e.reached, e.steps,
                                                 e.eval_every)))
    summary = _infer_cached(key, points, float(confidence), float(interval_level))
    rising = model_contradiction(evidence)
    if rising is not None:
        summary = replace(summary, fitted=None, interval=None, n_min=None, reason=rising)
    return Posterior(
        grid=points,
        probabilities=dict(summary.probabilities),
        most_probable=summary.most_probable,
        plausible=summary.plausible,
        confidence=float(confidence),
        resolved=summary.most_probable is not None and len(summary.plausible) == 1,
        fitted=summary.fitted,
        interval=summary.interval,
        n_min=summary.n_min,
        reach_fraction=dict(summary.reach_fraction),
        unreachable=dict(summary.unreachable),
        reason=summary.reason,
    )


RISE = 1.5  # N(b) this much higher at the largest reached batch size than at the smallest


def model_contradiction(evidence: Sequence[Evidence]) -> str | None:
    """Why the reached trials contradict N(b) = A*b/(K*b - B), which falls with b, or None.

    Seed noise of 10-30 % makes a flat N(b) rise a little by chance (b* then lies below the
    grid, which the posterior says); a rise by half or more is not noise but another shape,
    and no b* of this model describes it.
    """
    steps: dict[int, list[float]] = {}
    for e in evidence:
        if e.reached:
            steps.setdefault(e.batch_size, []).append(e.steps)
    if len(steps) < 2:
        return None
    low, high = min(steps), max(steps)
    n_low, n_high = (sum(steps[b]) / len(steps[b]) for b in (low, high))
    if n_high < RISE * n_low:
        return None
    return (f"fit: N(b) rises from {n_low:.6g} steps at batch size {low} to {n_high:.6g} at "
            f"{high}; the model N(b) = A*b/(K*b - B) falls with b, so it does not hold and "
            "gives no fitted b*")


def _grid(grid: Sequence[int]) -> tuple[int, ...]:
    values = list(grid)
    if not values:
        raise ScienceError("grid: must not be empty")
    for g in values:
        if isinstance(g, bool) or int(g) != g or g <= 0:
            raise ScienceError(f"grid: batch sizes must be positive integers, got {g!r}")
    return tuple(sorted({int(g) for g in values}))


@dataclass(frozen=True)
class _Summary:
    probabilities: tuple[tuple[int, float], ...]
    most_probable: int | None
    plausible: tuple[int, ...]
    fitted: float | None
    interval: tuple[float, float] | None
    n_min: float | None
    reach_fraction: tuple[tuple[int, float], ...]
    unreachable: tuple[tuple[int, float], ...]
    reason: str | None


def _beta_cells(points: tuple[int, ...], evidence: Sequence[Evidence]) -> np.ndarray:
    """beta = 0, then log-spaced from the smallest batch size / 4 to twice the largest."""
    sizes = [*points, *(e.batch_size for e in evidence)]
    lo, hi = min(sizes) / BETA_BELOW, max(sizes) * BETA_ABOVE
    count = max(2, math.ceil(math.log2(hi / lo) * BETA_PER_OCTAVE))
    return np.concatenate([[0.0], lo * 2.0 ** (np.arange(count) / BETA_PER_OCTAVE)])


@functools.lru_cache(maxsize=64)
def _infer_cached(evidence: tuple[Evidence, ...], points: tuple[int, ...], confidence: float,
                  interval_level: float) -> _Summary:
    trials = distinct_trials(evidence)
    tested: Counter[int] = Counter(e.batch_size for e in evidence)
    reached_at: Counter[int] = Counter(e.batch_size for e in evidence if e.reached)
    reach_fraction = tuple((b, reached_at[b] / tested[b]) for b in sorted(tested))

    betas = _beta_cells(points, evidence)
    log_beta_prior = np.full(len(betas), -math.log(len(betas)))
    any_reached = bool(trials.reached.any())
    if any_reached:
        # A reached trial at b <= beta rules that beta out: only beta below all of them.
        keep = betas < trials.batch[trials.reached].min()
        betas, log_beta_prior = betas[keep], log_beta_prior[keep]
        cells = make_cells(trials, betas, log_beta_prior)
        # A coarse pass finds the cells that matter; the fine pass integrates only those.
        coarse, step = n_min_grid(trials, cells, COARSE_POINTS, COARSE_HALF_WIDTH)
        mass = logsumexp(log_posterior(trials, cells, coarse, np.log(step)), axis=(1, 2))
        cells = cells.take(mass > mass.max() - PRUNE_NATS)
        log_n_min, step = n_min_grid(trials, cells, N_MIN_POINTS, N_MIN_HALF_WIDTH)
        log_step = np.log(step)
    else:
        # No scale from the data: a proper flat prior on log n_min from 1 step to 100 times
        # the longest trial, only so that `unreachable` means something.
        cells = make_cells(trials, betas, log_beta_prior)
        top = math.log(100.0 * max([1.0, *np.exp(trials.log_hi)]))
        axis = np.linspace(0.0, top, N_MIN_POINTS)
        log_n_min = np.broadcast_to(axis, (len(cells.beta), len(axis)))
        log_step = np.full(len(cells.beta), -math.log(len(axis)))
    log_post = log_posterior(trials, cells, log_n_min, log_step)
    weight = np.exp(log_post - logsumexp(log_post, axis=(0, 1, 2)))
    beta_weight = np.bincount(cells.beta_index, weights=weight.sum(axis=(1, 2)),
                              minlength=len(betas))

    unreachable = tuple((g, float(beta_weight[betas >= g].sum())) for g in points)
    if not any_reached:
        return _Summary((), None, (), None, None, None, reach_fraction, unreachable,
                        "no trial has reached the target yet: no batch size can be compared")

    argmins = [grid_argmin(float(bt), points) for bt in betas]
    mass: dict[int, float] = dict.fromkeys(points, 0.0)
    for g, w in zip(argmins, beta_weight, strict=True):
        if g is not None:
            mass[g] += float(w)
    total = sum(mass.values())
    if not total > 0:
        return _Summary((), None, (), None, None, None, reach_fraction, unreachable,
                        "no grid point can reach the target under the model")
    probabilities = {g: m / total for g, m in mass.items()}
    ranked = sorted(points, key=lambda g: (-probabilities[g], g))
    plausible: list[int] = []
    held = 0.0
    for g in ranked:
        plausible.append(g)
        held += probabilities[g]
        if held >= confidence * (1.0 - 1e-12):
            break
    lower, middle, upper = (2.0 * _beta_quantile(betas, beta_weight, q) for q in
                            ((1.0 - interval_level) / 2.0, 0.5, (1.0 + interval_level) / 2.0))
    n_min = _weighted_median(log_n_min.ravel(), weight.sum(axis=2).ravel())
    return _Summary(
        probabilities=tuple(probabilities.items()),
        most_probable=ranked[0],
        plausible=tuple(sorted(plausible)),
        fitted=middle,
        interval=(lower, upper),
        n_min=math.exp(n_min),
        reach_fraction=reach_fraction,
        unreachable=unreachable,
        reason=None,
    )


def _beta_quantile(betas: np.ndarray, weight: np.ndarray, q: float) -> float:
    """A quantile of beta, its cells read as bins: log-uniform between the midpoints of the
    log-spaced cells, uniform from 0 to the first edge for the beta = 0 cell."""
    cdf = np.cumsum(weight) / weight.sum()
    i = int(np.searchsorted(cdf, q))
    i = min(i, len(betas) - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if weight[i] <= 0 else float((q - before) / (cdf[i] - before))
    frac = min(max(frac, 0.0), 1.0)
    ratio = math.sqrt(2.0 ** (1.0 / BETA_PER_OCTAVE))
    if betas[i] == 0.0:
        first = betas[1] if len(betas) > 1 else 1.0
        return float(frac * first / ratio)
    lo, hi = math.log(betas[i] / ratio), math.log(betas[i] * ratio)
    return float(math.exp(lo + frac * (hi - lo)))


def _weighted_median(values: np.ndarray, weight: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weight[order])
    i = int(np.searchsorted(cdf, 0.5 * cdf[-1]))
    return float(values[order][min(i, len(values) - 1)])
