"""Specification of critbatch.simulate: synthetic trials that look like what a real run reports.

N(b) = n_min*b/(b - beta) times lognormal noise, seen at the first evaluation at or below tau,
cut at the budget; the same (simulation seed, batch size, seed) always gives the same trial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from critbatch.posterior import Evidence, grid_argmin
from critbatch.science import ScienceError
from critbatch.simulate import (
    Truth,
    crossing_step,
    draw_trial,
    draw_trials,
    random_truth,
    sweep_keys,
    trial_rng,
)

GRID = (4, 8, 16, 32, 64, 128)


def truth(**changes: float) -> Truth:
    fields = {"n_min": 200.0, "beta": 4.0, "sigma": 0.2, "eval_every": 20.0, "max_steps": 1000.0}
    return Truth(**{**fields, **changes})


@pytest.mark.parametrize(("field", "value"), [
    ("n_min", 0.0), ("max_steps", -1.0), ("beta", -1.0), ("sigma", math.nan),
    ("eval_every", -20.0), ("stall", 1.5), ("stall_growth", 0.5),
])
def test_truth_rejects_a_bad_field_by_name(field: str, value: float) -> None:
    with pytest.raises(ScienceError, match=field):
        truth(**{field: value})


def test_truth_gives_the_model_n_and_its_argmin() -> None:
    t = truth(n_min=100.0, beta=6.0)
    assert t.steps(12) == pytest.approx(200.0)
    assert t.steps(6) == math.inf
    assert t.critical_batch_size == 12.0
    assert t.true_argmin(GRID) == grid_argmin(6.0, GRID) == 16


def test_the_true_argmin_counts_what_a_stall_costs() -> None:
    """A stalled run spends the budget and runs again: b = 4 (SFO 800 + 4*1000*1) loses to
    8 (SFO 1067) when half its seeds stall."""
    t = truth(n_min=100.0, beta=2.0)
    assert t.true_argmin(GRID) == 4
    assert truth(n_min=100.0, beta=2.0, stall=0.5, stall_below=8).true_argmin(GRID) == 8


def test_stalls_grow_by_stall_growth_per_halving_of_the_batch_size() -> None:
    t = truth(stall=0.15, stall_below=16, stall_growth=4.0)
    assert [t.stall_probability(b) for b in (2, 4, 8, 16, 32)] == pytest.approx(
        [1.0, 0.6, 0.15, 0.0, 0.0])


def test_without_noise_the_reported_steps_are_n_rounded_up_to_the_next_evaluation() -> None:
    t = truth(n_min=100.0, beta=4.0, sigma=0.0, eval_every=30.0)
    e = draw_trial(t, 16, 0, np.random.default_rng(0))
    # N(16) = 100*16/12 = 133.3: first evaluation at or below tau is the one at step 150.
    assert e == Evidence(batch_size=16, steps=150.0, reached=True, eval_every=30.0, seed=0)


def test_a_trial_at_or_below_beta_never_reaches() -> None:
    e = draw_trial(truth(beta=8.0), 8, 1, np.random.default_rng(0))
    assert not e.reached and e.steps == 1000.0


def test_a_trial_whose_n_exceeds_the_budget_is_censored_at_the_budget() -> None:
    t = truth(n_min=200.0, beta=3.0, sigma=0.0, max_steps=500.0)  # N(4) = 800
    e = draw_trial(t, 4, 0, np.random.default_rng(0))
    assert (e.reached, e.steps) == (False, 500.0)


def test_stalls_hit_only_batch_sizes_below_stall_below() -> None:
    t = truth(sigma=0.0, stall=1.0, stall_below=16)
    assert not draw_trial(t, 8, 0, np.random.default_rng(0)).reached
    assert draw_trial(t, 16, 0, np.random.default_rng(0)).reached


def test_a_stall_does_not_change_the_noise_of_the_trials_that_do_not_stall() -> None:
    """Both forms draw the same random numbers, so the stall rate leaves other draws alone."""
    calm, stalling = truth(), truth(stall=0.5, stall_below=8)
    for seed in range(20):
        for b in (8, 32):
            assert crossing_step(calm, b, trial_rng(3, b, seed)) == \
                crossing_step(stalling, b, trial_rng(3, b, seed))


@given(st.permutations(sweep_keys(GRID, 3)), st.integers(0, 2**31))
@settings(max_examples=20, deadline=None)
def test_a_trial_depends_on_its_key_and_the_simulation_seed_not_on_order(
        keys: list[tuple[int, int]], sim_seed: int) -> None:
    t = truth(sigma=0.3)
    forward = {(e.batch_size, e.seed): e for e in draw_trials(t, sweep_keys(GRID, 3),
                                                              sim_seed=sim_seed)}
    shuffled = {(e.batch_size, e.seed): e for e in draw_trials(t, keys, sim_seed=sim_seed)}
    assert shuffled == forward


def test_another_simulation_seed_draws_other_trials() -> None:
    t = truth(sigma=0.3)
    assert draw_trials(t, sweep_keys(GRID, 2), sim_seed=1) != \
        draw_trials(t, sweep_keys(GRID, 2), sim_seed=2)


def test_the_noise_is_lognormal_with_the_truths_sigma() -> None:
    t = truth(n_min=1000.0, beta=0.0, sigma=0.2, eval_every=0.0, max_steps=1e9)
    logs = [math.log(e.steps / 1000.0) for e in draw_trials(t, [(64, s) for s in range(4000)],
                                                             sim_seed=0)]
    assert np.mean(logs) == pytest.approx(0.0, abs=0.02)
    assert np.std(logs) == pytest.approx(0.2, rel=0.05)


def test_random_truth_puts_b_star_and_the_budget_where_asked() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = random_truth(rng, GRID, critical=(8.0, 32.0), sigma=(0.1, 0.3), budget=(3.0, 8.0))
        assert 8.0 <= t.critical_batch_size <= 32.0
        assert 0.1 <= t.sigma <= 0.3
        assert 3.0 * t.n_min <= t.max_steps <= 8.0 * t.n_min + t.eval_every
        assert t.max_steps % t.eval_every == 0
