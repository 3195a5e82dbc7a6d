"""The adaptive strategy as a specification: where it starts trials, when it stops, and that it
keeps the planner's promises (cap, parallelism, pruning, restarts, no duplicates)."""

from __future__ import annotations

import pytest
from sweeps import sweep_manifest

from critbatch.planner import Observation, Phase, initial_design, plan
from critbatch.simulate import Truth, simulate_sweep
from critbatch.spec import SpecError, parse_sweep
from critbatch.vocabulary import TrialKey

GRID = [2, 4, 8, 16, 32, 64, 128]
# b* = 2 beta = 16, N(b) = 200 b / (b - 8): b <= 8 never reaches the target.
TRUTH = Truth(n_min=200.0, beta=8.0, sigma=0.15, eval_every=10, max_steps=4000)


def adaptive(**strategy):
    spec = {"batchSizes": GRID, "seeds": 3, "parallelism": 2,
            "strategy": {"type": "adaptive", **strategy}}
    return parse_sweep(sweep_manifest(**spec))


def started(p):
    return [k for group in p.create for k in group]


def test_it_starts_with_one_seed_on_every_other_batch_size_both_ends_included():
    sweep = adaptive()
    assert initial_design(GRID) == (2, 8, 32, 128)
    assert initial_design([4, 8, 16, 32, 64, 128]) == (4, 16, 64, 128)
    p = plan(parse_sweep(sweep_manifest(batchSizes=GRID, seeds=3, parallelism=8,
                                  strategy={"type": "adaptive"})), {})
    assert started(p) == [TrialKey(b, 0) for b in (2, 8, 32, 128)]
    assert all(t["selectedBecause"].startswith("initial design") for t in p.status["trials"])
    assert p.status["trialsTotal"] == 4 and p.status["trialsMax"] == 21
    assert started(plan(sweep, {})) == [TrialKey(2, 0), TrialKey(8, 0)]  # parallelism 2


def test_it_waits_for_the_first_results_before_looking_further():
    sweep = adaptive()
    first = plan(sweep, {})
    obs = {k: Observation(k, Phase.Running, steps=50) for k in started(first)}
    assert started(plan(sweep, obs, previous_status=first.status)) == []


def test_it_stops_adding_trials_once_one_batch_size_holds_the_confidence():
    run = simulate_sweep(adaptive(confidence=0.9), TRUTH, seed=1)
    cbs = run.status["criticalBatchSize"]
    assert run.status["phase"] == "Succeeded"
    assert len(run.started) < len(GRID) * 3
    ready = next(c for c in run.status["conditions"] if c["type"] == "Ready")
    if cbs["resolved"]:
        assert ready["status"] == "True" and ready["reason"] == "Resolved"
        assert cbs["probabilities"][str(cbs["mostProbable"])] >= 0.9
    else:  # every batch size that could still win used its seeds
        assert ready["status"] == "False" and ready["reason"] == "Unresolved"


@pytest.mark.parametrize("seed", range(4))
def test_it_never_exceeds_max_trials_or_parallelism_or_repeats_a_trial(seed):
    sweep = adaptive(maxTrials=7)
    run = simulate_sweep(sweep, TRUTH, seed=seed)
    assert len(run.started) <= 7
    assert len(set(run.started)) == len(run.started)
    assert all(k.seed < 3 and k.batch_size in GRID for k in run.started)
    assert run.status["phase"] in ("Succeeded", "Failed")
    assert run.max_running <= sweep.parallelism


def test_a_restarted_planner_chooses_what_the_old_one_would_have():
    sweep = adaptive()
    first = plan(sweep, {})
    obs = {k: Observation(k, Phase.Reached if k.batch_size > 8 else Phase.Censored,
                          steps=300 if k.batch_size > 8 else 4000) for k in started(first)}
    again = plan(sweep, obs, previous_status=first.status)
    assert started(plan(sweep, obs, previous_status=first.status)) == started(again)
    # The status remembers what was chosen: a planner that lost the Jobs before they were made
    # makes those again, and nothing else; the finished trials stay finished.
    gone = plan(sweep, {}, previous_status=again.status)
    assert started(gone) == started(again)
    assert {(t["batchSize"], t["phase"]) for t in gone.status["trials"]} >= {
        (2, "Censored"), (8, "Censored"), (32, "Pending"), (128, "Pending")}


def test_pruning_still_applies():
    sweep = adaptive()
    obs = {TrialKey(32, 0): Observation(TrialKey(32, 0), Phase.Reached, steps=300),
           TrialKey(128, 0): Observation(TrialKey(128, 0), Phase.Running, steps=200)}
    p = plan(sweep, obs)  # 128 x 200 = 25600 can no longer beat 32 x 300 = 9600
    assert [k for k, _ in p.stop] == [TrialKey(128, 0)]
    rows = {(t["batchSize"], t["seed"]): t["phase"] for t in p.status["trials"]}
    assert rows[(128, 0)] == "Pruned" and rows[(32, 0)] == "Reached"
    assert started(p) == [TrialKey(2, 0), TrialKey(8, 0)]  # the rest of the initial design


def test_max_trials_belongs_to_the_adaptive_strategy():
    with pytest.raises(SpecError, match=r"spec\.strategy\.maxTrials: only with type adaptive"):
        parse_sweep(sweep_manifest(strategy={"maxTrials": 3}))
    with pytest.raises(SpecError, match=r"spec\.strategy\.confidence: must be > 0\.5"):
        parse_sweep(sweep_manifest(strategy={"confidence": 0.2}))
    with pytest.raises(SpecError, match=r"spec\.strategy\.type"):
        parse_sweep(sweep_manifest(strategy={"type": "random"}))
    assert parse_sweep(sweep_manifest()).strategy.confidence == 0.95
    assert adaptive().strategy.confidence == 0.9
