"""Synthetic trials from a known model, to measure how well an estimator or a planner finds b*.

A trial is what a real run reports: N(b) = n_min*b/(b - beta) times lognormal seed noise,
seen only at evaluations (the first one at or below tau), cut at the step budget, and never
reached when b <= beta or the seed stalls. Each trial's draw is a function of (simulation seed,
batch size, seed) alone, so a simulated sweep gives the same results in any order, and a
planner that adds trials later sees the same trials it would have seen up front.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from critbatch.planner import Observation, Phase, plan
from critbatch.posterior import Evidence, grid_argmin
from critbatch.science import ScienceError
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey


@dataclass(frozen=True, kw_only=True)
class Truth:
    """The model a sweep is drawn from.

    `stall` is the probability that a seed at a batch size below `stall_below` never reaches
    tau whatever its N (small batches that settle above the threshold); each halving of the
    batch size below stall_below / 2 multiplies it by `stall_growth` (at most 1).
    """

    n_min: float
    beta: float
    sigma: float
    eval_every: float
    max_steps: float
    stall: float = 0.0
    stall_below: int = 0
    stall_growth: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_min", "max_steps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ScienceError(f"{name}: must be > 0, got {value!r}")
        for name in ("beta", "sigma", "eval_every"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ScienceError(f"{name}: must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.stall <= 1.0:
            raise ScienceError(f"stall: must be in [0, 1], got {self.stall!r}")
        if self.stall_below < 0:
            raise ScienceError(f"stall_below: must be >= 0, got {self.stall_below!r}")
        if not (math.isfinite(self.stall_growth) and self.stall_growth >= 1.0):
            raise ScienceError(f"stall_growth: must be a finite number >= 1, "
                               f"got {self.stall_growth!r}")

    @property
    def critical_batch_size(self) -> float:
        """b* = 2*beta."""
        return 2.0 * self.beta

    def steps(self, batch_size: float) -> float:
        """Noise-free N(b); infinite where b <= beta."""
        return math.inf if batch_size <= self.beta else self.n_min * batch_size / (
            batch_size - self.beta)

    def true_argmin(self, grid: Sequence[int]) -> int | None:
        """The grid point with the least noise-free expected SFO per run that reaches tau, a
        stalled run spending the budget."""
        return grid_argmin(self.beta, grid, n_min=self.n_min, budget=self.max_steps,
                           stalls={g: self.stall_probability(g) for g in grid})

    def stall_probability(self, batch_size: float) -> float:
        """P(a seed at this batch size never reaches tau)."""
        if batch_size >= self.stall_below:
            return 0.0
        halvings = max(0.0, math.log2(self.stall_below / (2.0 * batch_size)))
        return min(1.0, self.stall * self.stall_growth ** halvings)


def trial_rng(sim_seed: int, batch_size: int, seed: int) -> np.random.Generator:
    """The generator of one trial, from (simulation seed, batch size, seed) alone."""
    return np.random.default_rng([sim_seed, batch_size, seed])


def crossing_step(truth: Truth, batch_size: int, rng: np.random.Generator) -> float:
    """The step of the first evaluation at or below tau with no budget; inf if never.

    Always consumes the same random numbers (one uniform, one normal), so a trial's noise does
    not depend on whether it stalled.
    """
    stalled = rng.random() < truth.stall_probability(batch_size)
    noise = math.exp(truth.sigma * rng.standard_normal())
    if stalled or batch_size <= truth.beta:
        return math.inf
    n = truth.steps(batch_size) * noise
    if truth.eval_every > 0:
        return math.ceil(n / truth.eval_every - 1e-12) * truth.eval_every
    return n


def draw_trial(truth: Truth, batch_size: int, seed: int, rng: np.random.Generator) -> Evidence:
    """What a finished run reports: reached at its crossing step, or censored at the budget."""
    at = crossing_step(truth, batch_size, rng)
    if at <= truth.max_steps:
        return Evidence(batch_size=batch_size, steps=float(at), reached=True,
                        eval_every=truth.eval_every, seed=seed)
    return Evidence(batch_size=batch_size, steps=float(truth.max_steps), reached=False,
                    eval_every=truth.eval_every, seed=seed)


def draw_trials(truth: Truth, keys: Iterable[tuple[int, int]], *, sim_seed: int) -> list[Evidence]:
    """The finished trials of (batch size, seed) keys, each drawn from its own generator."""
    return [draw_trial(truth, b, s, trial_rng(sim_seed, b, s)) for b, s in keys]


def sweep_keys(grid: Sequence[int], seeds: int) -> list[tuple[int, int]]:
    """Every (batch size, seed) of a full grid sweep."""
    return [(b, s) for b in sorted(grid) for s in range(seeds)]


def random_truth(
    rng: np.random.Generator,
    grid: Sequence[int],
    *,
    critical: tuple[float, float] | None = None,
    sigma: tuple[float, float] = (0.1, 0.3),
    n_min: tuple[float, float] = (100.0, 2000.0),
    budget: tuple[float, float] = (3.0, 8.0),
    evals_per_n_min: float = 10.0,
    stall: float = 0.0,
    stall_below: int = 0,
    stall_growth: float = 1.0,
) -> Truth:
    """A truth drawn at random for a grid: b* log-uniform in `critical` (default: the grid's
    range), sigma uniform, n_min log-uniform, a budget of `budget` times n_min (so batch sizes
    b < beta*f/(f - 1) are censored), and about `evals_per_n_min` evaluations within n_min."""
    lo, hi = critical if critical is not None else (min(grid), max(grid))
    nm = math.exp(rng.uniform(math.log(n_min[0]), math.log(n_min[1])))
    every = max(1.0, float(round(nm / evals_per_n_min)))
    factor = rng.uniform(*budget)
    return Truth(
        n_min=nm,
        beta=0.5 * math.exp(rng.uniform(math.log(lo), math.log(hi))),
        sigma=rng.uniform(*sigma),
        eval_every=every,
        max_steps=every * math.ceil(factor * nm / every),
        stall=stall,
        stall_below=stall_below,
        stall_growth=stall_growth,
    )


# ---------------------------------------------------------------------------------------------
# The planner against synthetic trials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRun:
    """How a simulated sweep ended: its final status, the trials it started, the SFO spent."""

    status: Mapping[str, Any]
    started: tuple[TrialKey, ...]
    sfo_spent: float
    rounds: int
    max_running: int


def simulate_sweep(sweep: Sweep, truth: Truth, *, seed: int = 0, rounds: int = 10_000,
                   steps_per_round: int | None = None) -> SweepRun:
    """Drive `critbatch.planner.plan` as a backend would, with trials drawn from `truth`.

    Every running trial advances `steps_per_round` steps a round (default a twentieth of the
    budget) and reports its steps, so SFO-bound pruning acts on partial trials; a stopped trial
    vanishes from the observations, as a deleted Job does.
    """
    advance = steps_per_round or max(1, sweep.target.max_steps // 20)
    outcomes: dict[TrialKey, Evidence] = {}
    done_steps: dict[TrialKey, float] = {}
    observations: dict[TrialKey, Observation] = {}
    status: Mapping[str, Any] | None = None
    started: list[TrialKey] = []
    most = 0
    rounds_run = 0
    while rounds_run < rounds:
        rounds_run += 1
        result = plan(sweep, observations, previous_status=status)
        status = result.status
        for key, _ in result.stop:
            observations.pop(key, None)
        for key in (k for group in result.create for k in group):
            started.append(key)
            outcomes[key] = draw_trial(truth, key.batch_size, key.seed,
                                       trial_rng(seed, key.batch_size, key.seed))
            done_steps[key] = 0.0
            observations[key] = Observation(key, Phase.Running, steps=0.0, source="simulated")
        running = [k for k, o in observations.items() if o.phase is Phase.Running]
        most = max(most, len(running))
        if not running and not result.create:
            break
        for key in running:
            outcome = outcomes[key]
            done_steps[key] = min(done_steps[key] + advance, outcome.steps)
            if done_steps[key] >= outcome.steps:
                phase = Phase.Reached if outcome.reached else Phase.Censored
                observations[key] = Observation(key, phase, steps=outcome.steps,
                                                source="simulated")
            else:
                observations[key] = Observation(key, Phase.Running, steps=done_steps[key],
                                                source="simulated")
    spent = sum(k.batch_size * done_steps[k] for k in started)
    return SweepRun(status=status or {}, started=tuple(started), sfo_spent=spent, rounds=rounds_run,
                    max_running=most)
