"""Specification of critbatch.science: measured b*, Proposition 3.4, noise scale.

Expected values come from the model N(b) = A*b/(K*b - B) and the formulas of docs/science.md,
evaluated here by hand, never from the functions under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from critbatch import science
from critbatch.science import (
    DEFAULT_GRID,
    GradientNoiseScale,
    OptimizerSetting,
    Trial,
    estimate_batch_size,
    estimate_targets,
    measure,
    noise_ratio,
    noise_scale_terms,
    snap_to_grid,
)

GRID = [2**k for k in range(17)]
BUDGET = 10**9  # the step budget of censored trials: far beyond any N(b) drawn here


def model_trials(a: float, b: float, k: float, seeds: int = 1, noise: float = 0.0,
                 rng: np.random.Generator | None = None) -> list[Trial]:
    """Trials on GRID from the model; batch sizes at or below B/K never reach the target."""
    trials = []
    for bs in GRID:
        for seed in range(seeds):
            if k * bs <= b:
                trials.append(Trial(bs, BUDGET, False, seed))
                continue
            steps = a * bs / (k * bs - b)
            if noise:
                steps *= 1.0 + noise * rng.standard_normal()
            trials.append(Trial(bs, steps, True, seed))
    return trials


def model_sfo(bs: float, a: float, b: float, k: float) -> float:
    return a * bs * bs / (k * bs - b)


# Log-uniform A, K and b* = 2B/K strictly inside the grid, so that at least two grid points
# lie above B/K = b*/2 and reach the target.
log_a = st.floats(min_value=1.0, max_value=6.0)
log_k = st.floats(min_value=-3.0, max_value=3.0)
log2_bstar = st.floats(min_value=1.0, max_value=15.0)


# ---------------------------------------------------------------------------------------------
# Measured b* on noise-free data
# ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(log_a, log_k, log2_bstar)
def test_noise_free_measured_is_the_grid_point_with_least_sfo(
    la: float, lk: float, lb: float
) -> None:
    a, k, bstar = 10**la, 10**lk, 2**lb
    b = bstar * k / 2
    # SFO is convex with its minimum at b*: the least grid SFO is at a neighbour of b*.
    below = max(g for g in GRID if g <= bstar)
    above = min(g for g in GRID if g >= bstar)
    candidates = sorted({g for g in (below, above) if k * g > b})
    sfos = {g: model_sfo(g, a, b, k) for g in candidates}
    assume(len(candidates) == 1 or not math.isclose(*sfos.values(), rel_tol=1e-9))
    expected = min(candidates, key=lambda g: sfos[g])
    got = measure(model_trials(a, b, k))
    assert got.batch_size == expected
    assert list(got.censored) == [g for g in GRID if k * g <= b]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_a, log_k, st.floats(min_value=2.0, max_value=10.0),
       st.lists(st.sampled_from(GRID), min_size=1, max_size=4))
def test_censored_trials_never_count(la: float, lk: float, lb: float, extra: list[int]) -> None:
    """A trial that stopped early, however cheap, never becomes the measured b*."""
    a, k = 10**la, 10**lk
    b = 2**lb * k / 2
    clean = model_trials(a, b, k, seeds=2)
    # Stopped after 1 step: an SFO lower bound far below any real SFO.
    dirty = clean + [Trial(g, 1.0, False, 99) for g in extra]
    m_clean, m_dirty = measure(clean), measure(dirty)
    assert set(m_dirty.censored) == set(m_clean.censored) | set(extra)
    if m_clean.batch_size not in extra:
        assert m_dirty.batch_size == m_clean.batch_size
    assert m_dirty.batch_size not in extra
    assert any("censored" in w for w in m_dirty.warnings)


def test_a_censored_trial_that_could_still_win_is_a_warning() -> None:
    a, b, k = 1000.0, 16.0, 1.0
    trials = [*model_trials(a, b, k), Trial(8192, 2.0, False, 1)]
    got = measure(trials)
    assert 8192 in got.censored
    assert any("could still win" in w and "8192" in w for w in got.warnings)


def test_measure_with_nothing_reached_gives_no_number() -> None:
    got = measure([Trial(32, 500, False), Trial(64, 500, False)])
    assert got.batch_size is None
    assert got.points == ()
    assert got.censored == (32, 64)


# ---------------------------------------------------------------------------------------------
# Proposition 3.4 estimates
# ---------------------------------------------------------------------------------------------

lrs = st.floats(min_value=1e-6, max_value=1e-1)
betas = st.floats(min_value=0.0, max_value=0.99)
beta2s = st.floats(min_value=0.5, max_value=0.9999)
counts = st.integers(min_value=1_000, max_value=100_000_000)
optimizers = st.sampled_from(science.OPTIMIZERS)


def _estimate(setting: OptimizerSetting, params: int = 3_576_704, size: int = 3_033_042,
              ratio: float = 700.0) -> float:
    return estimate_batch_size(ratio, setting, params, size)


@settings(max_examples=100, deadline=None)
@given(optimizers, lrs, betas, beta2s, counts, counts)
def test_doubling_the_learning_rate_doubles_the_estimate(opt, lr, b1, b2, params, size) -> None:
    one = _estimate(OptimizerSetting(opt, lr, b1, b2), params, size)
    two = _estimate(OptimizerSetting(opt, 2 * lr, b1, b2), params, size)
    assert two == pytest.approx(2 * one, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(lrs, betas, beta2s, counts, counts)
def test_adabelief_estimate_is_half_of_adams(lr, b1, b2, params, size) -> None:
    adam = _estimate(OptimizerSetting("adam", lr, b1, b2), params, size)
    adabelief = _estimate(OptimizerSetting("adabelief", lr, b1, b2), params, size)
    assert adabelief == pytest.approx(adam / 2, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(lrs, betas, beta2s, betas, beta2s)
def test_rmsprop_ignores_the_betas(lr, b1, b2, other_b1, other_b2) -> None:
    one = _estimate(OptimizerSetting("rmsprop", lr, b1, b2))
    other = _estimate(OptimizerSetting("rmsprop", lr, other_b1, other_b2))
    assert one == other


@settings(max_examples=100, deadline=None)
@given(optimizers, lrs, counts, st.integers(min_value=2, max_value=1000))
def test_estimate_scales_linearly_with_dataset_size(opt, lr, size, factor) -> None:
    setting = OptimizerSetting(opt, lr)
    small = _estimate(setting, size=size)
    assert _estimate(setting, size=size * factor) == pytest.approx(factor * small, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(optimizers, lrs, counts)
def test_four_times_the_parameters_halve_the_estimate(opt, lr, params) -> None:
    setting = OptimizerSetting(opt, lr)
    assert _estimate(setting, params=4 * params) == pytest.approx(
        _estimate(setting, params=params) / 2, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(optimizers, lrs, betas, beta2s, st.floats(min_value=1, max_value=1e5), counts, counts)
def test_the_reference_itself_gets_its_own_batch_size_back(opt, lr, b1, b2, bstar, p, s) -> None:
    ref = OptimizerSetting(opt, lr, b1, b2)
    _, (est,) = estimate_targets(ref, bstar, p, s, [(ref, None, None)])
    assert est.batch_size == pytest.approx(bstar, rel=1e-12)
    assert est.params == p and est.dataset_size == s


@settings(max_examples=100, deadline=None)
@given(optimizers, lrs, optimizers, lrs, st.floats(min_value=1, max_value=1e5),
       st.floats(min_value=0.1, max_value=10), st.floats(min_value=0.1, max_value=10))
def test_an_interval_of_the_reference_maps_to_each_estimates_interval(
        ref_opt, ref_lr, opt, lr, bstar, below, above) -> None:
    """The estimate is linear in the reference's b*: each end of the reference's interval
    (widened to hold b*) maps to an end of the estimate's, which then holds the estimate."""
    ref = OptimizerSetting(ref_opt, ref_lr)
    ends = science.widen((bstar / below, bstar * above), bstar)
    assert ends[0] <= bstar <= ends[1]
    _, (est,) = estimate_targets(ref, bstar, 1000, 2000, [(OptimizerSetting(opt, lr), None, None)],
                                 reference_interval=ends)
    assert est.interval is not None
    assert est.interval == pytest.approx(tuple(est.batch_size * b / bstar for b in ends),
                                         rel=1e-9)
    assert est.interval[0] <= est.batch_size * (1 + 1e-12)
    assert est.batch_size <= est.interval[1] * (1 + 1e-12)
    _, (plain,) = estimate_targets(ref, bstar, 1000, 2000, [(OptimizerSetting(opt, lr), None,
                                                               None)])
    assert plain.interval is None and plain.batch_size == est.batch_size


def test_paper_dcgan_adam_to_rmsprop_by_hand() -> None:
    """Adam (lr 1e-4, betas 0.5/0.999) measured at b* = 32 on DCGAN/LSUN-Bedroom.

    D_adam = (1-0.5)^3 * sqrt(Theta/(1-0.999)) / |S| and D_rmsprop = sqrt(Theta) / |S|, so at
    equal learning rates b*_rmsprop = 32 * 0.125 * sqrt(1000) = 4 * sqrt(1000) = 126.49...;
    the nearest power of two is 128. AdaBelief at lr 3e-4: D doubles, lr triples: 48.
    """
    theta, size = 3_576_704, 3_033_042
    adam = OptimizerSetting("adam", 1e-4, 0.5, 0.999)
    ratio, (rms, adabelief) = estimate_targets(
        adam, 32, theta, size,
        [(OptimizerSetting("rmsprop", 1e-4), None, None),
         (OptimizerSetting("adabelief", 3e-4, 0.5, 0.999), None, None)])
    assert ratio == pytest.approx(32 * 0.125 * math.sqrt(theta / 0.001) / size / 1e-4)
    assert rms.batch_size == pytest.approx(126.4911064, rel=1e-9)
    assert rms.grid_batch_size == 128
    assert adabelief.batch_size == pytest.approx(48.0, rel=1e-12)
    assert noise_ratio(adam, 32, theta, size) == ratio


@pytest.mark.parametrize(
    ("value", "grid", "expected"),
    [
        (48, (32, 64), 32),  # a tie goes to the smaller
        (3, DEFAULT_GRID, 2),
        (6, DEFAULT_GRID, 4),
        (47, (64, 32), 32),  # nearest by absolute difference, not by ratio; any order
        (49, DEFAULT_GRID, 64),
        (0.2, DEFAULT_GRID, 1),
        (1e9, DEFAULT_GRID, 65536),
        (math.inf, DEFAULT_GRID, 65536),  # beyond the largest point: that point, never 1
        (1e300, (8, 16), 16),
        (0.0, (8, 16), 8),
        (20, (10, 30, 25), 25),
    ],
)
def test_snap_to_grid(value: float, grid: tuple[int, ...], expected: int) -> None:
    assert snap_to_grid(value, grid) == expected


def test_snap_to_grid_refuses_nan() -> None:
    with pytest.raises(science.ScienceError, match="NaN"):
        snap_to_grid(math.nan)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=1e6),
       st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=20))
def test_snap_to_grid_is_the_nearest_point_and_the_smaller_on_a_tie(value, grid) -> None:
    got = snap_to_grid(value, grid)
    assert got in grid
    for g in grid:
        assert abs(got - value) <= abs(g - value)
        if abs(got - value) == abs(g - value):
            assert got <= g


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "sgd", "lr": 1e-4}, "optimizer"),
        ({"optimizer": "adam", "lr": 0.0}, "lr"),
        ({"optimizer": "adam", "lr": math.nan}, "lr"),
        ({"optimizer": "adam", "lr": 1e-4, "beta1": 1.0}, "beta1"),
        ({"optimizer": "adam", "lr": 1e-4, "beta2": -0.1}, "beta2"),
    ],
)
def test_bad_optimizer_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(science.ScienceError, match=f"^{field}:"):
        OptimizerSetting(**kwargs)


# ---------------------------------------------------------------------------------------------
# Gradient noise scale
# ---------------------------------------------------------------------------------------------


def test_noise_scale_terms_invert_the_expected_squared_norms() -> None:
    """E|G_B|^2 = |G|^2 + tr(Sigma)/B: fed exact expectations, the terms come back exactly."""
    g2, trace = 3.5, 840.0
    for small, big in ((1, 2), (8, 64), (32, 1024)):
        got = noise_scale_terms(g2 + trace / small, g2 + trace / big, small, big)
        assert got == pytest.approx((g2, trace), rel=1e-9)


def test_noise_scale_terms_need_a_bigger_big_batch() -> None:
    with pytest.raises(science.ScienceError, match="big_batch"):
        noise_scale_terms(1.0, 1.0, 64, 64)


def test_gradient_noise_scale_recovers_trace_over_norm_on_synthetic_gradients() -> None:
    """Per-example gradients g = G + L z with known mean G and covariance Sigma = L L^T."""
    rng = np.random.default_rng(7)
    dim, small, big, steps = 40, 8, 64, 3000
    mean = rng.normal(size=dim)
    chol = rng.normal(size=(dim, dim)) * 0.6
    sigma = chol @ chol.T
    expected = np.trace(sigma) / float(mean @ mean)
    gns = GradientNoiseScale(decay=0.999)
    assert gns.value is None
    for _ in range(steps):
        per_example = mean + rng.normal(size=(big, dim)) @ chol.T
        g_small = per_example[:small].mean(axis=0)
        g_big = per_example.mean(axis=0)
        gns.update(float(g_small @ g_small), float(g_big @ g_big), small, big)
    assert gns.value == pytest.approx(expected, rel=0.05)
    assert 10 < expected < 1000  # a noise scale between the two batch sizes' range, not trivial

    restored = GradientNoiseScale()
    restored.load_state_dict(gns.state_dict())
    assert restored.value == gns.value
