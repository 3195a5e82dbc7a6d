"""Which tested batch size minimises SFO, as a posterior that counts censored trials.

The model is science's N(b) = A*b/(K*b - B), reparametrised as N(b) = n_min*b/(b - beta)
(n_min = A/K, beta = B/K, b* = 2*beta), with lognormal seed-to-seed noise of sd sigma on
log N, and seeds that may stall (never reach tau): none do, or all up to some batch size at
one rate, or each batch size at its own. beta, sigma and the stall rates live on fixed grids
and log n_min is integrated out per cell, so the posterior is a sum over cells: exact enough,
fast, and free of a sampler's randomness (the cells' likelihood is `critbatch.likelihood`'s).
Pure numpy (the operator's image has no scipy), no I/O.

A trial that reached the target tau says N(b) lies in (steps - eval_every, steps]; one that did
not (out of budget, pruned, still running) says N(b) > steps, or that the seed stalled. Neither
kind is dropped: a censored seed beside a reached sibling is evidence about both.

The argmin is of the expected SFO of one run that reaches tau: a stalled run spends the step
budget and is run again, so a batch size whose seeds often stall costs b*budget*p/(1 - p) on
top of its N(b)*b. Without stalls that is the paper's SFO(b) = N(b)*b.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from critbatch.likelihood import (
    STALLS,
    Stalls,
    distinct_trials,
    ladder_rungs,
    log_posterior,
    make_cells,
    n_min_grid,
)
from critbatch.logspace import logsumexp
from critbatch.science import ScienceError, check_trial

BETA_PER_OCTAVE = 8  # beta cells per octave at least, ...
BETA_PER_GAP = 4  # ... and per gap between neighbouring grid points on average, ...
BETA_PER_OCTAVE_MAX = 16  # ... at most this many
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
    `least_sfo` is the grid point most probably of least N(b)*b, stalls aside: the paper's
    b*, the one Proposition 3.4 speaks of; it is `most_probable` unless stalls moved that.
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
    least_sfo: int | None = None

    def sample_argmins(self, rng: np.random.Generator, n: int) -> list[int]:
        """Argmins of n cells drawn from the posterior (Thompson sampling); [] with no answer.

        A cell has one argmin, so this draws from `probabilities`.
        """
        if not self.probabilities or n <= 0:
            return []
        points = sorted(self.probabilities)
        weights = np.array([self.probabilities[g] for g in points])
        picks = rng.choice(len(points), size=n, p=weights / weights.sum())
        return [points[i] for i in picks]


def grid_argmin(beta: float, grid: Sequence[int], *, n_min: float = 1.0, budget: float = 0.0,
                stalls: Mapping[int, float] | None = None) -> int | None:
    """The grid point of least expected SFO per run that reaches tau; None if none can.

    That is n_min*g^2/(g - beta) for g > beta, plus g*budget*p/(1 - p) where a seed stalls
    with probability p = stalls[g] (none reaches where p is 1). Without stalls it depends on
    beta only: on a powers-of-two grid g wins for b* = 2*beta in [2g/3, 4g/3). A tie goes to
    the larger batch size: the same SFO in fewer steps.
    """
    best: int | None = None
    best_cost = math.inf
    for g in sorted(set(grid)):
        p = (stalls or {}).get(g, 0.0)
        if g > beta and p < 1.0:
            cost = n_min * g * g / (g - beta) + (g * budget * p / (1.0 - p) if p else 0.0)
            if cost <= best_cost:
                best, best_cost = g, cost
    return best


def _sfo(beta: np.ndarray, points: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The grid as floats, and SFO/n_min = g^2/(g - beta) on (cell, point), inf at g <= beta."""
    g = np.asarray(points, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return g, np.where(g > beta[:, None], g * g / (g - beta[:, None]), np.inf)


def _argmin(cost: np.ndarray) -> np.ndarray:
    """The index of the least cost on the last axis, a tie to the larger; -1 where all are
    infinite."""
    least, at = _running_min(cost[..., ::-1], ties_to_later=False)
    return np.where(np.isfinite(least[..., -1]), cost.shape[-1] - 1 - at[..., -1], -1)


def cell_argmins(beta: np.ndarray, points: Sequence[int]) -> np.ndarray:
    """`grid_argmin` of each beta without stalls, as an index into `points` (sorted ascending),
    -1 where every point is at or below beta."""
    return _argmin(_sfo(beta, points)[1])


def ladder_argmins(beta: np.ndarray, log_n_min: np.ndarray, points: Sequence[int],
                   budget: float, stall: np.ndarray) -> np.ndarray:
    """`grid_argmin` of every (cell, n_min, ladder) when seeds at points[j] stall with
    probability stall[ladder, j] (below 1), as an index into `points` (-1: none)."""
    g, sfo = _sfo(beta, points)
    per_n_min = budget * np.exp(-log_n_min)[..., None] * g
    out = np.empty((*log_n_min.shape, len(stall)), dtype=int)
    for k, p in enumerate(stall):
        out[..., k] = _argmin(sfo[:, None, :] + per_n_min * (p / (1.0 - p)))
    return out


def cut_argmins(beta: np.ndarray, log_n_min: np.ndarray, points: Sequence[int],
                budget: float) -> np.ndarray:
    """`grid_argmin` of every (cell, n_min, rate, cut) when seeds stall with STALLS[1:][rate]
    at the points up to points[cut] and never above, as an index into `points` (-1: none).

    The better of the least cost up to the cut (a running minimum from the smallest point)
    and above it (from the largest), so the work is linear in the grid's size.
    """
    g, sfo = _sfo(beta, points)
    size = len(g)
    high, high_at = _running_min(sfo[:, ::-1], ties_to_later=False)  # a tie to the larger
    high = np.concatenate([high[:, ::-1][:, 1:], np.full((len(beta), 1), np.inf)], axis=1)
    high_at = np.concatenate([size - 1 - high_at[:, ::-1][:, 1:],
                              np.full((len(beta), 1), -1)], axis=1)
    per_n_min = budget * np.exp(-log_n_min)[..., None] * g
    out = np.empty((*log_n_min.shape, len(STALLS) - 1, size), dtype=int)
    for k, p in enumerate(STALLS[1:]):
        low, low_at = _running_min(sfo[:, None, :] + per_n_min * (p / (1.0 - p)),
                                   ties_to_later=True)
        above = high[:, None, :] <= low  # the points above the cut are the larger ones
        best = np.where(above, high[:, None, :], low)
        out[..., k, :] = np.where(np.isfinite(best),
                                  np.where(above, high_at[:, None, :], low_at), -1)
    return out


def _running_min(cost: np.ndarray, *, ties_to_later: bool) -> tuple[np.ndarray, np.ndarray]:
    """The least of cost[..., :j + 1] and its index for every j."""
    least = np.minimum.accumulate(cost, axis=-1)
    if ties_to_later:
        new = cost <= least
    else:
        before = np.concatenate([np.full((*cost.shape[:-1], 1), np.inf), least[..., :-1]],
                                axis=-1)
        new = cost < before
    return least, np.maximum.accumulate(np.where(new, np.arange(cost.shape[-1]), 0), axis=-1)


def stalled_argmin_mass(beta: np.ndarray, log_n_min: np.ndarray, points: Sequence[int],
                        budget: float, stall: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """sum over (cell, n_min) of weight times P(each point is `grid_argmin`) when each point's
    seeds stall with probability STALLS[k] with probability stall[cell, n_min, point, k],
    independently of the others: exact, by comparing every point's possible costs."""
    g, sfo = _sfo(beta, points)
    odds = np.array([p / (1.0 - p) for p in STALLS])
    # The fewest (cell, n_min) pairs holding all but 1e-6 of the weight: the rest cannot move
    # a probability in the four digits the status shows.
    heaviest = np.argsort(weight, axis=None)[::-1]
    held = np.cumsum(weight.ravel()[heaviest])
    keep = np.zeros(weight.size, dtype=bool)
    keep[heaviest[:int(np.searchsorted(held, held[-1] * (1.0 - 1e-6))) + 1]] = True
    keep = keep.reshape(weight.shape)
    cost = ((sfo[:, None, :, None] + budget * np.exp(-log_n_min)[..., None, None]
             * g[:, None] * odds)[keep])  # (pair, point, stall)
    q, w = stall[keep], weight[keep]
    # Every point's possible costs, sorted together: how many of h's lie below a cost (h's
    # rise with its stall rate, so they are its first ones) gives P(cost_h < that cost).
    pairs, size, rates = cost.shape
    flat = cost.reshape(pairs, size * rates)
    order = np.argsort(flat, axis=1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=1)
    owner = order // rates  # the point each sorted cost belongs to
    before = np.zeros((pairs, size * rates + 1, size), dtype=np.int32)
    before[:, 1:] = np.cumsum(owner[..., None] == np.arange(size), axis=1)
    slot = np.arange(size * rates)
    starts = np.concatenate([np.ones((pairs, 1), bool), ranked[:, 1:] != ranked[:, :-1]], 1)
    first = np.maximum.accumulate(np.where(starts, slot, 0), axis=1)  # a run of equal costs
    ends = np.concatenate([ranked[:, 1:] != ranked[:, :-1], np.ones((pairs, 1), bool)], 1)
    after = np.minimum.accumulate(np.where(ends, slot + 1, size * rates)[:, ::-1], axis=1)[:, ::-1]
    below = np.take_along_axis(before, first[..., None], axis=1)  # (pair, sorted cost, h)
    at_most = np.take_along_axis(before, after[..., None], axis=1)
    smaller = np.arange(size)[None, None, :] < owner[..., None]  # h < g loses a tie with g
    count = np.where(smaller, below, at_most)
    held_q = np.concatenate([np.zeros((pairs, size, 1)), np.cumsum(q, axis=-1)], axis=-1)
    lose = np.take_along_axis(held_q[:, None], count[..., None], axis=-1)[..., 0]
    lose[np.arange(pairs)[:, None], slot, owner] = 0.0  # g against itself
    wins = np.clip(1.0 - lose, 0.0, 1.0).prod(axis=-1) * np.isfinite(ranked)
    chance = np.take_along_axis(q.reshape(pairs, size * rates), order, axis=1)
    return np.bincount(owner.ravel(), weights=(w[:, None] * wins * chance).ravel(),
                       minlength=size)


def infer(
    evidence: Sequence[Evidence],
    grid: Sequence[int],
    *,
    confidence: float = 0.95,
    interval_level: float = 0.95,
    budget: float | None = None,
) -> Posterior:
    """The posterior over the model's parameters given every trial, reached or censored.

    `budget` is the steps a run is given to reach tau (spec.target.maxSteps), what a stalled
    run costs before it is run again; by default the most steps of any trial.

    Priors (each weak, scaled by the grid where it has a scale):
    - beta: log-uniform from the smallest batch size / 4 to twice the largest (8 cells per
      octave, up to 16 on grids finer than powers of two), plus one cell at the limit
      beta = 0 (N flat in b). On a powers-of-two grid that gives every interior grid point the
      same prior chance to be the argmin (one octave of beta each) and the two edge points
      about 1.5 times that.
    - log n_min: flat (scale-free), integrated out per (beta, sigma) on 15 points spanning
      +-4.5 standard errors around where the reached trials put it (a coarse 5-point pass
      first drops cells more than 20 nats below the best; with no reached trial, flat from 1
      step to 100 times the longest trial).
    - sigma: lognormal around 0.2 (log-sd 0.75) on 12 points from 0.03 to 1.0: seed-to-seed
      spread of N is 10-30 % in practice, and with one seed per batch size a flat prior would
      believe a lucky near-perfect fit.
    - stalls, P(a seed never reaches tau whatever its N), four ways: none (prior 0.55); one
      rate in {0.1, 0.25, 0.5, 0.75, 0.9} at every grid point up to a cut and none above
      (0.15, rate and cut uniform); a ladder, a rate in {0.25, 0.5, 0.75, 0.9} at the
      grid's smallest batch size falling one or two steps of {0, 0.1, 0.25, 0.5, 0.75, 0.9}
      per octave above it (0.15, uniform); each tested batch size its own rate in {0, 0.1,
      0.25, 0.5, 0.75, 0.9} with prior {0.5, 0.1, ...} (0.15). Without stalls, one stalled
      seed beside a reached sibling could only be explained by b <= beta or huge noise, and
      would drag b* up; with one sweep-wide rate, a batch size where most seeds stall would
      look cheap by its few seeds that reached. GANs stall most at small batch sizes, alike
      (the cut) or thinning out (the ladder); each batch size's own rate takes no hint from
      a neighbour, so without the ladder a batch size whose few seeds all reached, next to
      one whose seeds mostly stalled, was held nearly sure never to stall. The prior still
      favours no stall at all.

    Memoised on (evidence, grid, levels): the planner asks again on every reconcile.
    """
    if not 0.0 < confidence < 1.0:
        raise ScienceError(f"confidence: must be in (0, 1), got {confidence!r}")
    if not 0.0 < interval_level < 1.0:
        raise ScienceError(f"interval_level: must be in (0, 1), got {interval_level!r}")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ScienceError(f"budget: must be a finite number > 0, got {budget!r}")
    points = _grid(grid)
    for e in evidence:
        if not isinstance(e, Evidence):
            raise ScienceError(f"evidence: expected Evidence, got {type(e).__name__}")
    key = tuple(sorted(evidence, key=lambda e: (e.batch_size, e.seed, e.reached, e.steps,
                                                 e.eval_every)))
    if budget is None:
        budget = default_budget(evidence)
    summary = _infer_cached(key, points, float(confidence), float(interval_level),
                            float(budget))
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
        least_sfo=summary.least_sfo,
    )


def default_budget(evidence: Sequence[Evidence]) -> float:
    """The steps a run was given when nobody says: the most steps of any trial (a censored
    trial stops at the budget)."""
    return max([1.0, *(e.steps for e in evidence)])


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
    least_sfo: int | None = None


def _cell_mass(post: Stalls) -> np.ndarray:
    """log P(cell, n_min), whichever way seeds stall."""
    return np.logaddexp(np.logaddexp(post.none, post.each),
                        np.logaddexp(logsumexp(post.below, axis=(2, 3)),
                                     logsumexp(post.thinning, axis=2)))


def beta_per_octave(points: Sequence[int]) -> int:
    """Cells of beta per octave. The argmin changes once between neighbouring grid points, at a
    beta between them; with too few cells there, a posterior narrower than a cell puts all its
    mass on one side, and a grid finer than powers of two gets neighbours' P near 1 and 0."""
    if len(points) < 2:
        return BETA_PER_OCTAVE
    gaps_per_octave = (len(points) - 1) / math.log2(max(points) / min(points))
    return min(BETA_PER_OCTAVE_MAX,
               max(BETA_PER_OCTAVE, math.ceil(BETA_PER_GAP * gaps_per_octave)))


def _beta_cells(points: tuple[int, ...], evidence: Sequence[Evidence],
                per_octave: int) -> np.ndarray:
    """beta = 0, then log-spaced from the smallest batch size / 4 to twice the largest."""
    sizes = [*points, *(e.batch_size for e in evidence)]
    lo, hi = min(sizes) / BETA_BELOW, max(sizes) * BETA_ABOVE
    count = max(2, math.ceil(math.log2(hi / lo) * per_octave))
    return np.concatenate([[0.0], lo * 2.0 ** (np.arange(count) / per_octave)])


@functools.lru_cache(maxsize=64)
def _infer_cached(evidence: tuple[Evidence, ...], points: tuple[int, ...], confidence: float,
                  interval_level: float, budget: float) -> _Summary:
    trials = distinct_trials(evidence)
    batches = np.unique(trials.batch)
    grid = np.array(points, dtype=float)
    tested: Counter[int] = Counter(e.batch_size for e in evidence)
    reached_at: Counter[int] = Counter(e.batch_size for e in evidence if e.reached)
    reach_fraction = tuple((b, reached_at[b] / tested[b]) for b in sorted(tested))

    per_octave = beta_per_octave(points)
    betas = _beta_cells(points, evidence, per_octave)
    log_beta_prior = np.full(len(betas), -math.log(len(betas)))
    any_reached = bool(trials.reached.any())
    if any_reached:
        # A reached trial at b <= beta rules that beta out: only beta below all of them.
        keep = betas < trials.batch[trials.reached].min()
        betas, log_beta_prior = betas[keep], log_beta_prior[keep]
        cells = make_cells(trials, betas, log_beta_prior)
        # A coarse pass finds the cells that matter; the fine pass integrates only those.
        coarse, step = n_min_grid(trials, cells, COARSE_POINTS, COARSE_HALF_WIDTH)
        mass = logsumexp(_cell_mass(log_posterior(trials, cells, coarse, np.log(step),
                                                  batches, grid)), axis=1)
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
    post = log_posterior(trials, cells, log_n_min, log_step, batches, grid)
    total = logsumexp(_cell_mass(post), axis=(0, 1))
    none, below, thinning, each = (np.exp(a - total) for a in
                                   (post.none, post.below, post.thinning, post.each))
    weight = none + below.sum(axis=(2, 3)) + thinning.sum(axis=2) + each  # (cell, n_min)
    beta_weight = np.bincount(cells.beta_index, weights=weight.sum(axis=1),
                              minlength=len(betas))

    unreachable = tuple((g, float(beta_weight[betas >= g].sum())) for g in points)
    if not any_reached:
        return _Summary((), None, (), None, None, None, reach_fraction, unreachable,
                        "no trial has reached the target yet: no batch size can be compared")

    at = cell_argmins(cells.beta, points)
    counted = np.bincount(at[at >= 0], weights=none.sum(axis=1)[at >= 0],
                          minlength=len(points))
    sfo_only = np.bincount(at[at >= 0], weights=weight.sum(axis=1)[at >= 0],
                           minlength=len(points))
    at = cut_argmins(cells.beta, log_n_min, points, budget)
    counted += np.bincount(at[at >= 0], weights=below[at >= 0], minlength=len(points))
    ladders = np.array(STALLS)[ladder_rungs(grid, grid[0])]
    at = ladder_argmins(cells.beta, log_n_min, points, budget, ladders)
    counted += np.bincount(at[at >= 0], weights=thinning[at >= 0], minlength=len(points))
    # A point not tested stalls as the nearest tested batch size above it (stalls are rarer at
    # larger batch sizes), else below it.
    nearest = np.minimum(np.searchsorted(batches, grid), len(batches) - 1)
    counted += stalled_argmin_mass(cells.beta, log_n_min, points, budget,
                                   post.rates[:, :, nearest], each)
    mass = {g: float(m) for g, m in zip(points, counted, strict=True)}
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
    lower, middle, upper = (2.0 * _beta_quantile(betas, beta_weight, q, per_octave) for q in
                            ((1.0 - interval_level) / 2.0, 0.5, (1.0 + interval_level) / 2.0))
    n_min = _weighted_median(log_n_min.ravel(), weight.ravel())
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
        least_sfo=points[int(np.argmax(sfo_only))] if sfo_only.max() > 0 else None,
    )


def _beta_quantile(betas: np.ndarray, weight: np.ndarray, q: float, per_octave: int) -> float:
    """A quantile of beta, its cells read as bins: log-uniform between the midpoints of the
    log-spaced cells, uniform from 0 to the first edge for the beta = 0 cell."""
    cdf = np.cumsum(weight) / weight.sum()
    i = int(np.searchsorted(cdf, q))
    i = min(i, len(betas) - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if weight[i] <= 0 else float((q - before) / (cdf[i] - before))
    frac = min(max(frac, 0.0), 1.0)
    ratio = math.sqrt(2.0 ** (1.0 / per_octave))
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
