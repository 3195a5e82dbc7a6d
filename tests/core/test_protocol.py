"""The trial protocol (docs/trial-protocol.md): the variables a trainer is given read back to the
same settings, and a result counts only when it is well-formed and this trial's."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from critbatch.protocol import (
    BATCH_SIZE,
    METRICS_PORT,
    REQUIRED_VARS,
    TARGET_GOAL,
    TARGET_METRIC,
    TARGET_THRESHOLD,
    VERSION_VAR,
    ProtocolError,
    TrialSettings,
    result_optimizer,
    result_params,
    result_problem,
    result_value,
)
from critbatch.science import OptimizerSetting
from critbatch.vocabulary import Goal, TrialKey, reached

settings = st.builds(
    TrialSettings,
    batch_size=st.integers(1, 1 << 20), seed=st.integers(0, 10**6),
    max_steps=st.integers(1, 10**9),
    threshold=st.floats(allow_nan=False, allow_infinity=False, width=64),
    metric=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,20}", fullmatch=True),
    goal=st.sampled_from(Goal), metrics_port=st.integers(0, 65535),
    metrics_host=st.sampled_from(["0.0.0.0", "127.0.0.1", "::1", "trainer-0.svc"]),
    result_file=st.sampled_from([None, "/dev/termination-log", "out dir/result.json"]),
    checkpoint_dir=st.sampled_from([None, "/checkpoints"]),
    eval_every=st.one_of(st.none(), st.integers(1, 10**6)),
    data_path=st.sampled_from([None, "/data/celeba"]),
    sweep=st.sampled_from(["local", "digits-demo"]))


@given(settings)
def test_the_variables_read_back_to_the_same_settings(s):
    env = s.env()
    assert set(REQUIRED_VARS) <= set(env)
    assert all(isinstance(v, str) for v in env.values())
    assert TrialSettings.from_env(env) == s


@pytest.mark.parametrize(("change", "named"), [
    ({BATCH_SIZE: ""}, BATCH_SIZE),
    ({BATCH_SIZE: "0"}, BATCH_SIZE),
    ({BATCH_SIZE: "8.0"}, BATCH_SIZE),
    ({BATCH_SIZE: "-8"}, BATCH_SIZE),
    ({TARGET_THRESHOLD: "nan"}, TARGET_THRESHOLD),
    ({TARGET_THRESHOLD: "inf"}, TARGET_THRESHOLD),
    ({TARGET_THRESHOLD: "ten"}, TARGET_THRESHOLD),
    ({TARGET_GOAL: "lower"}, TARGET_GOAL),
    ({TARGET_METRIC: "val acc"}, TARGET_METRIC),
    ({TARGET_METRIC: "x" * 64}, TARGET_METRIC),
    ({METRICS_PORT: "65536"}, METRICS_PORT),
    ({VERSION_VAR: "2"}, VERSION_VAR),
])
def test_a_bad_variable_is_refused_by_name(change, named):
    env = {**TrialSettings(batch_size=8, seed=0, max_steps=100, threshold=1.0).env(), **change}
    with pytest.raises(ProtocolError, match=f"^{named}: "):
        TrialSettings.from_env(env)


@given(st.floats(allow_nan=True), st.floats(allow_nan=False, allow_infinity=False))
def test_reaching_is_at_or_past_the_threshold_in_the_goals_direction(value, tau):
    if math.isfinite(value):
        assert reached(value, tau, Goal.minimize) == (value <= tau)
        assert reached(value, tau, Goal.maximize) == (value >= tau)
    else:
        assert not reached(value, tau, Goal.minimize) and not reached(value, tau, "maximize")
    assert not reached(None, tau)


GOOD = {"sweep": "s", "batch_size": 8, "seed": 0, "reached": True, "steps": 620}


@pytest.mark.parametrize(("change", "problem"), [
    ({}, None),
    ({"fid": math.nan, "interpolated_steps": None}, None),
    ({"value": 0.93, "metric": "accuracy", "params": 1000, "optimizer": {"name": "sgd"}}, None),
    ({"steps": math.inf}, "steps: must be a finite number >= 0, got Infinity"),
    ({"steps": -1}, "steps: must be a finite number >= 0, got -1"),
    ({"steps": 10**400}, "steps: too large"),
    ({"steps": "620"}, 'steps: expected a number, got "620"'),
    ({"steps": True}, "steps: expected a number, got true"),
    ({"reached": 1}, "reached: expected true or false, got 1"),
    ({"batch_size": 0}, "batch_size: expected an integer >= 1, got 0"),
    ({"seed": -1}, "seed: expected an integer >= 0, got -1"),
    ({"value": "low"}, 'value: expected an integer or a number or null, got "low"'),
    ({"params": 1.5}, "params: expected an integer or null, got 1.5"),
    ({"steps": 0}, "steps: 0 for a trial that reached the target"),
])
def test_a_result_needs_the_required_keys_with_their_types(change, problem):
    assert result_problem({**GOOD, **change}) == problem


@pytest.mark.parametrize("missing", ["batch_size", "seed", "reached", "steps"])
def test_a_result_without_a_required_key_names_it(missing):
    data = {k: v for k, v in GOOD.items() if k != missing}
    assert result_problem(data).startswith(f"{missing}: missing")


def test_a_result_must_be_this_trials_and_within_the_budget():
    assert result_problem([GOOD]) == "not a JSON object"
    assert "another trial's result" in result_problem(GOOD, TrialKey(8, 1))
    assert "another sweep's result" in result_problem(GOOD, TrialKey(8, 0), sweep="t")
    assert "above spec.target.maxSteps 600" in result_problem(GOOD, max_steps=600)
    assert result_problem(GOOD, TrialKey(8, 0), sweep="s", max_steps=620) is None


def test_the_optional_keys_read_with_the_built_in_trainers_names_as_fallbacks():
    assert result_value({"value": 0.9, "fid": 40.0}) == 0.9
    assert result_value({"fid": 40}) == 40.0
    assert result_value({"value": math.nan}) is None
    assert result_params({"generator_params": 1200}) == 1200
    assert result_params({"params": 0}) is None
    adam = {"name": "adam", "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999}
    assert result_optimizer({"optimizer": adam}) == OptimizerSetting("adam", 1e-3, 0.9, 0.999)
    assert "covers adam" in result_optimizer({"optimizer": {**adam, "name": "sgd"}})
    assert "needs learning_rate > 0" in result_optimizer({"optimizer": {**adam, "beta2": 1.0}})
    assert result_optimizer({}) == "the trainer reports no optimizer"
