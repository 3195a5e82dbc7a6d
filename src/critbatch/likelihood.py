"""The censoring-aware likelihood behind `critbatch.posterior`, on a grid of cells.

A cell is (beta, sigma) of N(b) = n_min*b/(b - beta) with lognormal seed noise of sd sigma on
log N; log n_min is integrated on quadrature points per cell. Seeds may stall (never reach
tau), in one of four ways (`Stalls`): no seed ever does; seeds stall with one probability on
STALLS at every batch size up to a cut, and never above it; with a probability that falls down
STALLS as the batch size grows (a ladder); or each batch size has its own probability. Here:
the cells and their priors (beta's comes from the posterior), the trials as distinct rows, and
the posterior of each way. Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from critbatch.logspace import LOG_SQRT_2PI, log_ndtr, log_normal_mass

if TYPE_CHECKING:
    from critbatch.posterior import Evidence

SIGMAS = tuple(float(s) for s in np.geomspace(0.03, 1.0, 12))
SIGMA_PRIOR_MEDIAN = 0.2
SIGMA_PRIOR_LOG_SD = 0.75
STALLS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
# The prior of each way seeds may stall: none; one rate up to a cut; rates thinning out with b
# down a ladder; each batch size its own rate.
STALL_WAYS = (0.55, 0.15, 0.15, 0.15)
# A ladder: STALLS[start] at the grid's smallest batch size, `step` rungs lower per octave.
LADDERS = tuple((start, step) for start in range(2, len(STALLS)) for step in (1, 2))
STALL_PRIOR = (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)  # of a batch size's own rate
LIKELIHOOD_CHUNK = 64  # distinct trials per pass: memory stays cells x n_min x 64 floats


@dataclass(frozen=True)
class Trials:
    """Distinct observations with their multiplicities, split by what they say about N."""

    batch: np.ndarray
    log_hi: np.ndarray
    log_lo: np.ndarray  # -inf: no lower bound; equal to log_hi: N known exactly
    count: np.ndarray
    reached: np.ndarray


def distinct_trials(evidence: Sequence[Evidence]) -> Trials:
    """The evidence as distinct rows (batch size, bounds on log N, reached) with their counts."""
    rows: Counter[tuple[int, float, float, bool]] = Counter()
    for e in evidence:
        if e.reached:
            exact = e.eval_every == 0
            lo = e.steps if exact else e.steps - e.eval_every
            rows[(e.batch_size, float(e.steps), float(lo) if lo > 0 else 0.0, True)] += 1
        elif e.steps > 0:  # censored at step 0 says nothing
            rows[(e.batch_size, float(e.steps), 0.0, False)] += 1
    keys = sorted(rows)
    with np.errstate(divide="ignore"):
        return Trials(
            batch=np.array([k[0] for k in keys], dtype=float),
            log_hi=np.log(np.array([k[1] for k in keys], dtype=float)),
            log_lo=np.log(np.array([k[2] for k in keys], dtype=float)),
            count=np.array([rows[k] for k in keys], dtype=float),
            reached=np.array([k[3] for k in keys], dtype=bool),
        )


def log_sigma_prior() -> np.ndarray:
    """log prior of each of SIGMAS: lognormal around SIGMA_PRIOR_MEDIAN, normalised."""
    z = (np.log(np.array(SIGMAS)) - math.log(SIGMA_PRIOR_MEDIAN)) / SIGMA_PRIOR_LOG_SD
    logp = -0.5 * z * z
    return logp - np.logaddexp.reduce(logp)


@dataclass(frozen=True)
class Cells:
    """(beta, sigma) cells, flattened, with what each trial's mean log N is shifted by there."""

    beta_index: np.ndarray
    beta: np.ndarray
    sigma: np.ndarray
    log_prior: np.ndarray
    shift: np.ndarray  # (cell, trial): log(b / (b - beta)), 0 where b <= beta
    feasible: np.ndarray  # (cell, trial): b > beta

    def take(self, keep: np.ndarray) -> Cells:
        return Cells(self.beta_index[keep], self.beta[keep], self.sigma[keep],
                     self.log_prior[keep], self.shift[keep], self.feasible[keep])


def make_cells(trials: Trials, betas: np.ndarray, log_beta_prior: np.ndarray) -> Cells:
    """Every (beta, sigma) pair as a cell, with its log prior and the trials' shifts there."""
    beta_index, sigma_index = (a.ravel() for a in np.meshgrid(
        np.arange(len(betas)), np.arange(len(SIGMAS)), indexing="ij"))
    beta = betas[beta_index]
    feasible = trials.batch[None, :] > beta[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(feasible, np.log(trials.batch[None, :]
                                          / (trials.batch[None, :] - beta[:, None])), 0.0)
    return Cells(beta_index, beta, np.array(SIGMAS)[sigma_index],
                 log_beta_prior[beta_index] + log_sigma_prior()[sigma_index], shift, feasible)


def log_likelihood(trials: Trials, cells: Cells, log_n_min: np.ndarray,
                   batches: np.ndarray) -> np.ndarray:
    """log P(the trials at each of `batches` | cell, log n_min, stall probability) on axes
    (cell, n_min, batch size, stall), summed over chunks of trials so that a sweep of
    thousands of trials needs no more memory than one of 64."""
    total = np.zeros((*log_n_min.shape, len(batches), len(STALLS)))
    for start in range(0, len(trials.batch), LIKELIHOOD_CHUNK):
        cols = slice(start, start + LIKELIHOOD_CHUNK)
        part = Trials(trials.batch[cols], trials.log_hi[cols], trials.log_lo[cols],
                      trials.count[cols], trials.reached[cols])
        total += _log_likelihood_part(part, cells.shift[:, cols], cells.feasible[:, cols],
                                      cells.sigma, log_n_min, batches)
    return total


def _log_likelihood_part(trials: Trials, shift: np.ndarray, feasible: np.ndarray,
                         sigma: np.ndarray, log_n_min: np.ndarray,
                         batches: np.ndarray) -> np.ndarray:
    """log_likelihood for one chunk of trials: reached ones by how exactly N is known and by
    not having stalled, censored ones as survival mixed with the stall probability."""
    sig = sigma[:, None, None]
    base = log_n_min[..., None]
    counted = trials.count[:, None] * (trials.batch[:, None] == batches[None, :])  # (trial, b)
    r, c = trials.reached, ~trials.reached
    with np.errstate(divide="ignore"):
        total = (np.log1p(-np.array(STALLS)) * counted[r].sum(axis=0)[:, None]
                 + np.zeros((*log_n_min.shape, 1, 1)))
    exact = trials.log_lo == trials.log_hi
    open_below = np.isneginf(trials.log_lo)
    for kind in (r & exact, r & open_below, r & ~exact & ~open_below):
        if not kind.any():
            continue
        mu = base + shift[:, None, kind]
        hi = (trials.log_hi[kind] - mu) / sig
        if exact[kind].all():
            ll = -0.5 * hi * hi - LOG_SQRT_2PI - np.log(sig) - trials.log_hi[kind]
        elif open_below[kind].all():
            ll = log_ndtr(hi)
        else:
            ll = log_normal_mass((trials.log_lo[kind] - mu) / sig, hi)
        ll = np.where(feasible[:, None, kind], ll, -np.inf)
        total += (ll @ counted[kind])[..., None]
    if c.any():
        z = (trials.log_hi[c] - base - shift[:, None, c]) / sig
        log_survive = np.where(feasible[:, None, c], log_ndtr(-z), 0.0)
        for k, p in enumerate(STALLS):
            with np.errstate(divide="ignore"):
                per = np.logaddexp(math.log(p) if p else -np.inf,
                                   math.log1p(-p) + log_survive)  # p + (1 - p) S
            total[..., k] += per @ counted[c]
    return total


def n_min_grid(trials: Trials, cells: Cells, points: int,
               half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature points of log n_min per cell, centred where the reached trials put it, and
    their spacing."""
    r = trials.reached
    count = trials.count[r]
    width = np.where(np.isneginf(trials.log_lo[r]), 1.0, trials.log_hi[r] - trials.log_lo[r])
    x = (trials.log_hi[r] - 0.5 * width) - cells.shift[:, r]  # each trial's own log n_min
    n = count.sum()
    mean = (x @ count) / n
    scatter = np.sqrt(((x - mean[:, None]) ** 2) @ count / n)
    spread = np.sqrt(cells.sigma**2 + (count @ width**2) / n / 12.0)
    half = half_width * np.maximum(spread, scatter) / math.sqrt(n)
    log_n_min = mean[:, None] + half[:, None] * np.linspace(-1.0, 1.0, points)
    return log_n_min, 2.0 * half / (points - 1)


def ladder_rungs(batch: np.ndarray, smallest: float) -> np.ndarray:
    """Each ladder's index into STALLS at each batch size, on (ladder, batch): its start at
    `smallest`, its step lower per octave above (higher below), within STALLS."""
    octaves = np.rint(np.log2(np.asarray(batch, dtype=float) / smallest))
    start, step = (np.array(column)[:, None] for column in zip(*LADDERS, strict=True))
    return np.clip(start - step * octaves, 0, len(STALLS) - 1).astype(int)


@dataclass(frozen=True)
class Stalls:
    """The unnormalised log posterior of each way seeds may stall, the quadrature weight
    included: `none` on (cell, n_min); `below` on (cell, n_min, rate, cut) for STALLS[1:] at
    every batch size up to the grid's point `cut`; `thinning` on (cell, n_min, ladder) for
    LADDERS from the grid's smallest batch size; `each` on (cell, n_min), with `rates`, each
    tested batch size's posterior of STALLS then, on (cell, n_min, batch size, rate)."""

    none: np.ndarray
    below: np.ndarray
    thinning: np.ndarray
    each: np.ndarray
    rates: np.ndarray


def log_posterior(trials: Trials, cells: Cells, log_n_min: np.ndarray, log_step: np.ndarray,
                  batches: np.ndarray, grid: np.ndarray) -> Stalls:
    """The posterior on the cells, n_min and how seeds stall; `batches` are the tested batch
    sizes (ascending), `grid` the points a cut may follow (ascending; a ladder starts at the
    first, tested yet or not, so that an adaptive sweep's ladders stay put)."""
    per = log_likelihood(trials, cells, log_n_min, batches)
    prior = (cells.log_prior + log_step)[:, None]
    steady = per[..., 0].sum(axis=-1)
    gained = np.cumsum(per[..., 1:] - per[..., :1], axis=-2)  # (cell, n_min, batch, rate)
    gained = np.concatenate([np.zeros((*gained.shape[:-2], 1, gained.shape[-1])), gained],
                            axis=-2)
    upto = np.searchsorted(batches, grid, side="right")  # tested batch sizes up to each cut
    below = (steady[..., None, None] + np.moveaxis(gained[..., upto, :], -1, -2)
             + math.log(STALL_WAYS[1] / (len(STALLS) - 1) / len(grid)))
    rungs = ladder_rungs(batches, grid[0])
    thinning = (per[:, :, np.arange(len(batches))[None, :], rungs].sum(axis=-1)
                + math.log(STALL_WAYS[2] / len(LADDERS)))
    own = per + np.log(np.array(STALL_PRIOR))
    mixed = np.logaddexp.reduce(own, axis=-1)
    with np.errstate(invalid="ignore"):
        rates = np.nan_to_num(np.exp(own - mixed[..., None]))
    return Stalls(none=steady + math.log(STALL_WAYS[0]) + prior,
                  below=below + prior[..., None, None], thinning=thinning + prior[..., None],
                  each=mixed.sum(axis=-1) + math.log(STALL_WAYS[3]) + prior, rates=rates)
