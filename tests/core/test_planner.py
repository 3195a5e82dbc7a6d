"""The planner as a specification: what it starts, stops and reports, for given trial states."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sweeps import sweep_manifest

from critbatch import science
from critbatch.planner import (
    FINAL,
    Observation,
    Phase,
    ReferenceStatus,
    invalid_status,
    job_name,
    merge_conditions,
    plan,
    reference_from_status,
    transitions,
)
from critbatch.spec import SpecError, parse_sweep
from critbatch.vocabulary import TrialKey

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def make_sweep(**spec):
    return parse_sweep(sweep_manifest(**spec))


def reached(b, s, steps, **kw):
    return Observation(TrialKey(b, s), Phase.Reached, steps=steps, source="direct",
                       result={"generator_params": 1000, "dataset_size": 1797}, **kw)


def running(b, s, steps=None, **kw):
    return Observation(TrialKey(b, s), Phase.Running, steps=steps, source="direct", **kw)


def started(p):
    """The trials a plan starts, whatever Jobs they are packed into."""
    return [k for group in p.create for k in group]


def n_of(b):
    """N(b) = 500 b / (b - 1.5): measured b* on powers of two is 4, fitted b* is 3."""
    return math.ceil(500 * b / (b - 1.5))


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def test_job_names_are_deterministic_dns_labels():
    assert job_name("demo", TrialKey(64, 1)) == "demo-b64-s1"
    long = "x" * 200
    a, b = job_name(long, TrialKey(1024, 31)), job_name(long + "y", TrialKey(1024, 31))
    assert len(a) <= 63 and len(b) <= 63 and a != b and DNS_LABEL.match(a)
    assert job_name(long, TrialKey(1024, 31)) == a
    dotted = job_name("my.sweep", TrialKey(2, 0))
    assert DNS_LABEL.match(dotted) and dotted != job_name("my-sweep", TrialKey(2, 0))


@settings(max_examples=60)
@given(st.text("abc-.019", min_size=0, max_size=120).map(lambda t: f"a{t}z"),
       st.integers(1, 1 << 20), st.integers(0, 31))
def test_job_name_is_always_a_short_label(name, b, s):
    out = job_name(name, TrialKey(b, s))
    assert len(out) <= 63 and DNS_LABEL.match(out) and out.endswith(f"-b{b}-s{s}")


# ---------------------------------------------------------------------------------------------
# Starting trials
# ---------------------------------------------------------------------------------------------


def test_a_new_sweep_starts_the_first_trials_up_to_parallelism_in_order():
    s = make_sweep(parallelism=3)
    p = plan(s, {})
    assert started(p) == [TrialKey(2, 0), TrialKey(2, 1), TrialKey(4, 0)]
    assert p.stop == ()
    assert p.status["phase"] == "Running" and p.status["progress"] == "0/12"
    assert {t["phase"] for t in p.status["trials"]} == {"Pending"}


def test_running_trials_count_against_parallelism_and_are_not_recreated():
    s = make_sweep(parallelism=3)
    obs = {k: running(k.batch_size, k.seed, 10) for k in (TrialKey(2, 0), TrialKey(4, 1))}
    p = plan(s, obs)
    assert started(p) == [TrialKey(2, 1)]


def test_a_finished_trial_whose_job_is_gone_stays_finished_and_is_not_rerun():
    s = make_sweep(parallelism=2, batchSizes=[2, 4])
    first = plan(s, {TrialKey(2, 0): reached(2, 0, 2000)}).status
    # The Job was garbage-collected; only the previous status remembers the result.
    p = plan(s, {}, previous_status=first)
    assert TrialKey(2, 0) not in started(p)
    row = next(t for t in p.status["trials"] if (t["batchSize"], t["seed"]) == (2, 0))
    assert row["phase"] == "Reached" and row["steps"] == 2000 and row["sfo"] == 4000


def test_appending_batch_sizes_starts_only_the_new_trials():
    s = make_sweep(batchSizes=[2, 4], seeds=1, parallelism=4)
    obs = {TrialKey(2, 0): reached(2, 0, 2000), TrialKey(4, 0): reached(4, 0, 800)}
    done = plan(s, obs).status
    assert done["phase"] == "Succeeded"
    bigger = make_sweep(batchSizes=[2, 4, 8, 16], seeds=1, parallelism=4)
    p = plan(bigger, {}, previous_status=done)
    assert started(p) == [TrialKey(8, 0), TrialKey(16, 0)]
    assert p.status["phase"] == "Running" and p.status["trialsDone"] == 2


def test_a_job_that_exists_but_is_pending_counts_as_active():
    s = make_sweep(parallelism=1, batchSizes=[2, 4], seeds=1, queueName="gpus")
    obs = {TrialKey(2, 0): Observation(TrialKey(2, 0), Phase.Pending, reason="suspended")}
    assert started(plan(s, obs)) == []


# ---------------------------------------------------------------------------------------------
# Several trials per GPU: one Job for a pod's trials
# ---------------------------------------------------------------------------------------------


def test_trials_are_packed_trials_per_gpu_to_a_job_in_sweep_order():
    s = make_sweep(batchSizes=[2, 4, 8], seeds=2, parallelism=4, trialsPerGPU=2)
    p = plan(s, {})
    assert p.create == ((TrialKey(2, 0), TrialKey(2, 1)), (TrialKey(4, 0), TrialKey(4, 1)))
    jobs = {(t["batchSize"], t["seed"]): t["job"] for t in p.status["trials"]}
    assert jobs[(2, 0)] == jobs[(2, 1)] == "demo-b2-s0"
    assert jobs[(4, 0)] == jobs[(4, 1)] == "demo-b4-s0"


def test_parallelism_counts_a_running_job_as_trials_per_gpu_trials():
    s = make_sweep(batchSizes=[2, 4, 8], seeds=2, parallelism=4, trialsPerGPU=2)
    # One trial of the first pod is done; its pod still holds the GPU for the other.
    obs = {TrialKey(2, 0): reached(2, 0, 2000, job="demo-b2-s0"),
           TrialKey(2, 1): running(2, 1, 1900, job="demo-b2-s0")}
    assert plan(s, obs).create == ((TrialKey(4, 0), TrialKey(4, 1)),)
    # Fewer slots than a pod's trials still start one pod.
    assert plan(make_sweep(parallelism=1, trialsPerGPU=4), {}).create == (
        (TrialKey(2, 0), TrialKey(2, 1), TrialKey(4, 0), TrialKey(4, 1)),)


def test_a_trial_that_cannot_win_runs_on_while_its_pod_holds_one_that_can():
    s = make_sweep(batchSizes=[2, 4, 8], seeds=1, parallelism=2, trialsPerGPU=2,
                   target={"fidThreshold": 50, "maxSteps": 4000})
    best = {TrialKey(2, 0): reached(2, 0, 500, job="demo-b2-s0")}

    def pod(steps4, steps8):
        return {**best, TrialKey(4, 0): running(4, 0, steps4, job="demo-b4-s0"),
                TrialKey(8, 0): running(8, 0, steps8, job="demo-b4-s0")}

    # b = 4 is past the bound (4 * 300 >= 2 * 500), b = 8 is not (8 * 10): the pod runs on.
    p = plan(s, pod(300, 10))
    rows = {(t["batchSize"], t["seed"]): t for t in p.status["trials"]}
    assert p.stop == ()
    assert rows[(4, 0)]["phase"] == "Running" and "runs on" in rows[(4, 0)]["reason"]
    assert rows[(8, 0)]["phase"] == "Running"
    # Once neither can win, the pod's Job is stopped and both are pruned.
    p = plan(s, pod(320, 200), previous_status=p.status)
    assert sorted(k for k, _ in p.stop) == [TrialKey(4, 0), TrialKey(8, 0)]
    rows = {(t["batchSize"], t["seed"]): t for t in p.status["trials"]}
    assert rows[(4, 0)]["phase"] == rows[(8, 0)]["phase"] == "Pruned"


# ---------------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------------


def test_sfo_bound_stops_a_running_trial_that_cannot_win():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    # b=4 finished with SFO 3200; b=64 at 50 steps has spent 3200 already.
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 50)}
    p = plan(s, obs)
    assert p.stop and p.stop[0][0] == TrialKey(64, 0) and "cannot win" in p.stop[0][1]
    row = p.status["trials"][1]
    assert row["phase"] == "Pruned"
    assert p.status["sfoSaved"] == 64 * (4000 - 50)
    assert p.status["criticalBatchSize"]["measured"] == 4
    assert p.status["phase"] == "Succeeded"


def test_sfo_bound_spares_a_trial_that_could_still_win():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 49)}
    p = plan(s, obs)
    assert p.stop == () and p.status["trials"][1]["phase"] == "Running"


def test_pruning_can_be_turned_off():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2, pruning={"sfoBound": False})
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 3000)}
    assert plan(s, obs).stop == ()


def test_with_seeds_the_bound_uses_complete_batch_sizes_and_the_mean_over_seeds():
    s = make_sweep(batchSizes=[4, 8], seeds=2, parallelism=4)
    # Only one seed of b=4 is done: no complete batch size, nothing to prune against.
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(4, 1): running(4, 1, 10),
           TrialKey(8, 0): running(8, 0, 500), TrialKey(8, 1): running(8, 1, 500)}
    assert plan(s, obs).stop == ()
    # b=4 complete (mean SFO 3200); b=8 seeds at 500 and 0 steps: mean bound 2000 < 3200.
    obs[TrialKey(4, 1)] = reached(4, 1, 800)
    obs[TrialKey(8, 1)] = Observation(TrialKey(8, 1), Phase.Pending)
    assert plan(s, obs).stop == ()
    # Both at 400 steps: bound 3200 >= 3200, neither can win.
    obs[TrialKey(8, 0)], obs[TrialKey(8, 1)] = running(8, 0, 400), running(8, 1, 400)
    p = plan(s, obs)
    assert {k for k, _ in p.stop} == {TrialKey(8, 0), TrialKey(8, 1)}


def test_a_pruned_trial_whose_job_survived_a_restart_is_stopped_again():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 60)}
    before = plan(s, obs).status
    p = plan(s, obs, previous_status=before)
    assert [k for k, _ in p.stop] == [TrialKey(64, 0)]
    assert p.status["sfoSaved"] == before["sfoSaved"]  # recomputed, not accumulated twice


def test_a_pruned_trial_that_reached_the_target_before_it_stopped_counts_as_measured():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 60)}
    before = plan(s, obs).status
    assert before["trials"][1]["phase"] == "Pruned"
    obs[TrialKey(64, 0)] = reached(64, 0, 70)
    after = plan(s, obs, previous_status=before).status
    assert after["trials"][1]["phase"] == "Reached" and after["trials"][1]["steps"] == 70
    assert after["criticalBatchSize"]["measured"] == 4


def test_pending_trials_of_a_hopeless_batch_size_are_pruned_without_starting():
    s = make_sweep(batchSizes=[4, 64], seeds=2, parallelism=3)
    obs = {TrialKey(4, 0): reached(4, 0, 800), TrialKey(4, 1): reached(4, 1, 800),
           TrialKey(64, 0): running(64, 0, 200)}
    p = plan(s, obs)
    assert started(p) == []
    assert [k for k, _ in p.stop] == [TrialKey(64, 0)]
    assert [t["phase"] for t in p.status["trials"]][2:] == ["Pruned", "Pruned"]


# ---------------------------------------------------------------------------------------------
# b*, estimates and the status
# ---------------------------------------------------------------------------------------------


def _complete(s, steps=n_of):
    return {k: reached(k.batch_size, k.seed, steps(k.batch_size)) for k in s.trials()}


def test_a_complete_sweep_reports_its_answer_and_how_sure_and_is_ready_when_resolved():
    s = make_sweep(pruning={"sfoBound": False})
    st_ = plan(s, _complete(s)).status
    cb = st_["criticalBatchSize"]
    trials = [science.Trial(k.batch_size, n_of(k.batch_size), True, k.seed) for k in s.trials()]
    assert cb["mostProbable"] == 4 and cb["plausible"] == [4] and cb["resolved"] is True
    assert cb["probabilities"]["4"] >= 0.95 and sum(cb["probabilities"].values()) == \
        pytest.approx(1.0, abs=1e-3)
    assert cb["reachFraction"] == {str(b): 1.0 for b in s.batch_sizes}
    assert cb["measured"] == science.measure(trials).batch_size == 4
    assert cb["fitted"] == pytest.approx(3.0, rel=0.05)
    assert cb["interval"][0] <= 3.0 <= cb["interval"][1]
    assert cb["measuredSfo"] == 4 * n_of(4)
    assert cb["generatorParams"] == 1000 and cb["datasetSize"] == 1797
    assert cb["noiseRatio"] == pytest.approx(science.noise_ratio(
        s.optimizer.setting(), 4, 1000, 1797), rel=1e-5)
    assert st_["phase"] == "Succeeded" and st_["trialsDone"] == st_["trialsTotal"] == 12
    ready = st_["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Resolved")
    assert all(c["observedGeneration"] == s.generation for c in st_["conditions"])


def test_a_finished_sweep_with_several_plausible_batch_sizes_is_not_ready():
    """One noisy seed per batch size cannot tell 8 from 16: the sweep finishes, unresolved."""
    s = make_sweep(batchSizes=[4, 8, 16, 32], seeds=1, pruning={"sfoBound": False})
    steps = {4: 1000, 8: 480, 16: 250, 32: 150}
    st_ = plan(s, {k: reached(k.batch_size, 0, steps[k.batch_size]) for k in s.trials()}).status
    cb = st_["criticalBatchSize"]
    ready = st_["conditions"][0]
    assert st_["phase"] == "Succeeded" and cb["resolved"] is False and len(cb["plausible"]) > 1
    assert (ready["status"], ready["reason"]) == ("False", "Unresolved")
    assert all(str(b) in ready["message"] for b in cb["plausible"])
    assert transitions(None, st_)[-1][1] == "CriticalBatchSizeUnresolved"


def test_a_censored_seed_keeps_its_batch_sizes_reached_seed_as_evidence():
    s = make_sweep(batchSizes=[4, 8, 16], seeds=2, pruning={"sfoBound": False})
    obs = _complete(s)
    obs[TrialKey(4, 1)] = Observation(TrialKey(4, 1), Phase.Censored, steps=4000,
                                      source="direct")
    cb = plan(s, obs).status["criticalBatchSize"]
    assert cb["reachFraction"]["4"] == 0.5
    assert cb["measured"] != 4  # the descriptive rule drops it ...
    assert cb["probabilities"]["4"] > 0  # ... the answer does not


def test_stalled_seeds_move_the_answer_but_not_the_noise_ratio():
    """The digits demo with --bf16 (six seeds, maxSteps 1000): four seeds stalled at b = 4,
    whose two others reached fastest. The answer prices the stalls in; Proposition 3.4's noise
    ratio is of the b* of N(b) alone, and the status says which it used."""
    steps = {4: (360, None, None, 420, None, None), 8: (400, 300, 320, 340, None, 340),
             16: (280, 280, 320, 280, 260, 280), 32: (200, 280, 220, 260, 240, 220),
             64: (180, 260, 200, 260, 220, 240), 128: (180, 220, 200, 220, 220, 220)}
    s = make_sweep(batchSizes=sorted(steps), seeds=6, pruning={"sfoBound": False},
                   target={"fidThreshold": 200, "evalEvery": 20, "maxSteps": 1000})
    obs = {k: reached(k.batch_size, k.seed, n) if n is not None else
           Observation(k, Phase.Censored, steps=1000, source="direct")
           for k in s.trials() for n in [steps[k.batch_size][k.seed]]}
    st_ = plan(s, obs).status
    cb = st_["criticalBatchSize"]
    assert cb["mostProbable"] != 4 and cb["resolved"] is False
    assert cb["noiseRatio"] == pytest.approx(science.noise_ratio(
        s.optimizer.setting(), 4, 1000, 1797), rel=1e-5)
    assert any(w.startswith("noiseRatio: from b = 4") for w in st_["warnings"])
    assert any("stalls as a run of spec.target.maxSteps" in w for w in st_["warnings"])


def test_estimates_for_other_optimizers_once_b_star_is_measured():
    s = make_sweep(pruning={"sfoBound": False}, estimate={"targets": [
        {"name": "rms", "optimizer": "rmsprop", "learningRate": 1e-4},
        {"optimizer": "adam", "learningRate": 2e-4, "datasetSize": 100000}]})
    cb = plan(s, _complete(s)).status["criticalBatchSize"]
    ratio = science.noise_ratio(s.optimizer.setting(), 4, 1000, 1797)
    e0, e1 = cb["estimates"]
    assert e0["name"] == "rms" and e0["batchSize"] == pytest.approx(
        science.estimate_batch_size(ratio, science.OptimizerSetting("rmsprop", 1e-4, 0.0, 0.99),
                                    1000, 1797), rel=1e-5)
    assert e0["gridBatchSize"] == science.snap_to_grid(e0["batchSize"])
    assert e1["datasetSize"] == 100000 and e1["batchSize"] == pytest.approx(
        science.estimate_batch_size(ratio, science.OptimizerSetting("adam", 2e-4), 1000, 100000),
        rel=1e-5)


def test_a_reference_noise_ratio_predicts_b_star_before_any_trial_finishes():
    s = make_sweep(reference={"sweep": "adam-ref"})
    p = plan(s, {}, reference=ReferenceStatus(5000.0, 1000, 1797))
    cb = p.status["criticalBatchSize"]
    want = science.estimate_batch_size(5000.0, s.optimizer.setting(), 1000, 1797)
    assert cb["predicted"] == pytest.approx(want, rel=1e-5)
    assert cb["predictedGrid"] == science.snap_to_grid(want, sorted(s.batch_sizes))
    assert cb["predictedInterval"] is None  # the reference gave no interval
    assert cb["measured"] is None
    # Without the reference's numbers there is no prediction, and a warning says why.
    p = plan(s, {})
    assert p.status["criticalBatchSize"]["predicted"] is None
    assert any("adam-ref" in w for w in p.status["warnings"])


def test_a_reference_of_another_architecture_is_a_warning():
    s = make_sweep(reference={"sweep": "adam-ref"})
    # reached() reports a generator of 1000 parameters.
    same = plan(s, {TrialKey(2, 0): reached(2, 0, 900)},
                reference=ReferenceStatus(5000.0, 1000, 1797)).status
    assert not any("architecture" in w for w in same["warnings"])
    other = plan(s, {TrialKey(2, 0): reached(2, 0, 900)},
                 reference=ReferenceStatus(5000.0, 4000, 1797)).status
    (w,) = [w for w in other["warnings"] if "architecture" in w]
    assert "1000" in w and "4000" in w
    assert other["criticalBatchSize"]["predicted"] is not None  # still said, with the warning


def test_the_prediction_carries_the_interval_of_the_references_fitted_b_star():
    """Proposition 3.4 is linear in the reference's b*: the ends of the reference's credible
    interval (widened to the grid b* the noise ratio came from), as noise ratios, give the
    prediction's interval."""
    ref_sweep = make_sweep(pruning={"sfoBound": False}, estimate={"targets": [
        {"name": "rms", "optimizer": "rmsprop", "learningRate": 1e-4}]})
    ref = plan(ref_sweep, _complete(ref_sweep)).status
    cb = ref["criticalBatchSize"]
    setting = ref_sweep.optimizer.setting()
    low, high = cb["interval"]
    assert cb["mostProbable"] == 4 and high < 4  # the fit puts b* near 3, the grid at 4
    assert cb["noiseRatioInterval"] == pytest.approx(
        [science.noise_ratio(setting, b, 1000, 1797) for b in (low, 4)], rel=1e-5)
    assert cb["noiseRatioInterval"][1] == pytest.approx(cb["noiseRatio"], rel=1e-5)
    (e,) = cb["estimates"]
    assert e["batchSizeInterval"] == pytest.approx(
        [e["batchSize"] * b / 4 for b in (low, 4)], rel=1e-4)

    target = make_sweep(reference={"sweep": "ref"},
                        optimizer={"name": "rmsprop", "generator": {"learningRate": 1e-4},
                                   "discriminator": {"learningRate": 1e-4}})
    got = plan(target, {}, reference=reference_from_status(ref)).status["criticalBatchSize"]
    assert got["predicted"] == pytest.approx(e["batchSize"], rel=1e-4)
    assert got["predictedInterval"] == pytest.approx(e["batchSizeInterval"], rel=1e-4)
    assert got["predictedInterval"][0] <= got["predicted"] <= got["predictedInterval"][1]


def test_a_known_noise_ratio_in_the_spec_predicts_too():
    s = make_sweep(reference={"noiseRatio": 5000.0, "generatorParams": 1000})
    cb = plan(s, {}).status["criticalBatchSize"]
    assert cb["predicted"] == pytest.approx(
        science.estimate_batch_size(5000.0, s.optimizer.setting(), 1000, 1797), rel=1e-5)


def test_all_censored_ends_failed_without_a_number():
    s = make_sweep(batchSizes=[2, 4], seeds=1)
    obs = {k: Observation(k, Phase.Censored, steps=4000, source="prometheus")
           for k in s.trials()}
    st_ = plan(s, obs).status
    assert st_["phase"] == "Failed" and st_["criticalBatchSize"]["measured"] is None
    assert st_["conditions"][0]["reason"] == "NoMeasurement"
    assert any("censored" in w for w in st_["warnings"])


def test_failed_trials_make_the_sweep_degraded_with_their_reason():
    s = make_sweep(batchSizes=[2], seeds=1)
    k = TrialKey(2, 0)
    st_ = plan(s, {k: Observation(k, Phase.Failed, reason="BackoffLimitExceeded: boom")}).status
    degraded = st_["conditions"][2]
    assert (degraded["status"], degraded["reason"]) == ("True", "TrialsFailed")
    assert "BackoffLimitExceeded: boom" in degraded["message"]


def test_problems_from_the_backend_become_a_degraded_condition():
    s = make_sweep()
    st_ = plan(s, {}, problems=[("MetricsUnavailable", "Prometheus unreachable")]).status
    assert st_["conditions"][2] == {"type": "Degraded", "status": "True",
                                    "reason": "MetricsUnavailable",
                                    "message": "Prometheus unreachable",
                                    "observedGeneration": 1}


def test_progress_survives_a_metrics_outage():
    s = make_sweep()
    before = plan(s, {TrialKey(2, 0): running(2, 0, 700)}).status
    p = plan(s, {TrialKey(2, 0): running(2, 0, None)}, previous_status=before)
    assert p.status["trials"][0]["steps"] == 700 and p.status["trials"][0]["source"] == "direct"


def test_a_reached_observation_without_steps_waits_for_its_result():
    s = make_sweep(batchSizes=[2], seeds=1)
    k = TrialKey(2, 0)
    st_ = plan(s, {k: Observation(k, Phase.Reached, steps=None)}).status
    assert st_["trials"][0]["phase"] == "Running" and st_["phase"] == "Running"


def test_invalid_status_names_the_field():
    err = SpecError("spec.batchSizes[1]: batch size 4096 exceeds the digits dataset's 1797")
    st_ = invalid_status(err, 3)
    ready = st_["conditions"][0]
    assert st_["phase"] == "Invalid"
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "False", "InvalidSpec", 3)
    assert ready["message"].startswith("spec.batchSizes[1]")


def test_merge_conditions_keeps_transition_times_of_unchanged_statuses():
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "t0"},
           {"type": "Degraded", "status": "False", "lastTransitionTime": "t0"}]
    new = [{"type": "Ready", "status": "True", "reason": "Measured"},
           {"type": "Degraded", "status": "False", "reason": "AsExpected"},
           {"type": "Progressing", "status": "False"}]
    out = merge_conditions(old, new, "t1")
    assert [c["lastTransitionTime"] for c in out] == ["t1", "t0", "t1"]
    assert out[1]["reason"] == "AsExpected"


def test_transitions_name_what_happened():
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    a = plan(s, {TrialKey(4, 0): running(4, 0, 10), TrialKey(64, 0): running(64, 0, 10)}).status
    b = plan(s, {TrialKey(4, 0): reached(4, 0, 800), TrialKey(64, 0): running(64, 0, 60)},
             previous_status=a).status
    reasons = [r for _, r, _ in transitions(None, a)]
    assert reasons == ["TrialStarted", "TrialStarted"]
    reasons = [r for _, r, _ in transitions(a, b)]
    assert reasons == ["TrialReached", "TrialPruned", "CriticalBatchSizeResolved"]
    assert transitions(b, b) == []


def test_plans_are_deterministic():
    s = make_sweep()
    obs = {TrialKey(2, 0): reached(2, 0, 2000), TrialKey(4, 1): running(4, 1, 5)}
    assert plan(s, obs) == plan(s, obs)


# ---------------------------------------------------------------------------------------------
# Properties over random trial states
# ---------------------------------------------------------------------------------------------

# Weighted towards reached and running trials, where pruning decisions happen.
STATES = ("none", "pending", "censored", "failed") + ("running", "reached") * 3


@st.composite
def scenarios(draw):
    sizes = draw(st.lists(st.sampled_from([2, 4, 8, 16, 32, 64, 128]), min_size=1, max_size=5,
                          unique=True))
    seeds = draw(st.integers(1, 3))
    parallelism = draw(st.integers(1, 5))
    per_gpu = draw(st.integers(1, 3))
    max_steps = 4000
    s = make_sweep(batchSizes=sizes, seeds=seeds, parallelism=parallelism, trialsPerGPU=per_gpu,
                   target={"fidThreshold": 50, "maxSteps": max_steps})
    obs, prev_rows = {}, []
    for k in s.trials():
        state = draw(st.sampled_from(STATES))
        steps = draw(st.integers(1, max_steps))
        # Trials packed into a few shared Jobs, or each in its own.
        job = f"job-{draw(st.integers(0, 2))}" if per_gpu > 1 else None
        if state == "pending":
            obs[k] = Observation(k, Phase.Pending, job=job)
        elif state == "running":
            obs[k] = Observation(k, Phase.Running, steps=steps, source="direct", job=job)
            # Pruned by an earlier plan whose stop has not landed yet.
            if draw(st.booleans()) and draw(st.booleans()):
                prev_rows.append({"batchSize": k.batch_size, "seed": k.seed, "phase": "Pruned",
                                  "steps": steps, "source": "direct", "job": job})
        elif state == "reached":
            obs[k] = reached(k.batch_size, k.seed, steps)
        elif state == "censored":
            obs[k] = Observation(k, Phase.Censored, steps=max_steps, source="direct")
        elif state == "failed":
            obs[k] = Observation(k, Phase.Failed, reason="boom")
        # A previous status may remember some trials as finished whose Job is gone.
        if state == "none" and draw(st.booleans()):
            phase = draw(st.sampled_from(["Reached", "Censored", "Failed", "Pruned"]))
            prev_rows.append({"batchSize": k.batch_size, "seed": k.seed, "phase": phase,
                              "steps": steps, "source": "direct"})
    prev = {"trials": prev_rows} if prev_rows else None
    return s, obs, prev


def _best_complete(status, seeds):
    groups = {}
    for t in status["trials"]:
        groups.setdefault(t["batchSize"], []).append(t)
    best = math.inf
    for b, rows in groups.items():
        if len(rows) == seeds and all(r["phase"] == "Reached" for r in rows):
            best = min(best, b * sum(r["steps"] for r in rows) / seeds)
    return best


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plan_invariants(scenario):
    s, obs, prev = scenario
    p = plan(s, obs, previous_status=prev)
    prev_final = {(t["batchSize"], t["seed"]) for t in (prev or {}).get("trials", [])}
    active = sum(1 for k, o in obs.items() if o.phase in (Phase.Pending, Phase.Running)
                 and (k.batch_size, k.seed) not in prev_final)

    # Never more than parallelism / trialsPerGPU Jobs (at least one; a Job stopped now frees its
    # slot); never duplicates; never starts what has a Job or finished.
    stopped = {k for k, _ in p.stop}
    live_jobs = {o.job or str(k) for k, o in obs.items()
                 if o.phase in (Phase.Pending, Phase.Running)
                 and (k.batch_size, k.seed) not in prev_final and k not in stopped}
    assert len(p.create) <= max(0, max(1, s.parallelism // s.trials_per_gpu) - len(live_jobs))
    if s.trials_per_gpu == 1:
        assert len(started(p)) <= max(0, s.parallelism - (active - len(stopped - set(
            TrialKey(*t) for t in prev_final))))
    assert all(1 <= len(g) <= s.trials_per_gpu for g in p.create)
    assert all(len(g) == s.trials_per_gpu for g in p.create[:-1])
    assert len(set(started(p))) == len(started(p))
    for k in started(p):
        assert k not in obs
        assert (k.batch_size, k.seed) not in prev_final
    # Starts in sweep order: the created ones are the first startable trials.
    rows = {(t["batchSize"], t["seed"]): t for t in p.status["trials"]}
    startable = [k for k in s.trials() if k not in obs and rows[(k.batch_size, k.seed)]["phase"]
                 == "Pending"]
    assert list(started(p)) == startable[:len(started(p))]

    # Prunes only trials that cannot win: their batch size's least possible mean SFO is already
    # at or above the best complete one.
    best = _best_complete(p.status, s.seeds)
    newly_pruned = [t for t in p.status["trials"] if t["phase"] == "Pruned"
                    and (t["batchSize"], t["seed"]) not in prev_final]
    for t in newly_pruned:
        group = [r for r in p.status["trials"] if r["batchSize"] == t["batchSize"]]
        bound = t["batchSize"] * sum(r["steps"] or 0 for r in group) / s.seeds
        assert bound >= best, (t, best)
    for k, _ in p.stop:
        assert rows[(k.batch_size, k.seed)]["phase"] == "Pruned"
        assert k in obs
        # Stopping a Job never stops a trial that can still win.
        for other, o in obs.items():
            if o.job is not None and o.job == obs[k].job:
                assert rows[(other.batch_size, other.seed)]["phase"] not in ("Pending",
                                                                             "Running")
    # A pod's trials share its Job's name.
    for g in p.create:
        assert {rows[(k.batch_size, k.seed)]["job"] for k in g} == {job_name(s.name, g[0])}

    # Finished stays finished; the table covers every trial once; counts add up.
    for k, o in obs.items():
        if o.phase in FINAL and (k.batch_size, k.seed) not in prev_final:
            assert rows[(k.batch_size, k.seed)]["phase"] == o.phase.value
    for t in (prev or {}).get("trials", []):
        assert rows[(t["batchSize"], t["seed"])]["phase"] == t["phase"]
    assert len(rows) == len(s.trials()) == p.status["trialsTotal"]
    done = sum(1 for t in p.status["trials"] if Phase(t["phase"]) in FINAL)
    assert p.status["trialsDone"] == done
    assert (p.status["phase"] in ("Succeeded", "Failed")) == (done == len(rows))
    if p.status["criticalBatchSize"]["measured"] is not None:
        assert p.status["criticalBatchSize"]["measured"] in s.batch_sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_replanning_after_acting_creates_nothing_twice(scenario):
    """Level-based: once the created Jobs exist (as Pending), a second plan does not create them
    again, and a stopped trial stays Pruned."""
    s, obs, prev = scenario
    p1 = plan(s, obs, previous_status=prev)
    after = dict(obs)
    for g in p1.create:
        for k in g:
            after[k] = Observation(k, Phase.Pending, job=job_name(s.name, g[0]))
    for k, _ in p1.stop:
        after.pop(k, None)
    p2 = plan(s, after, previous_status=p1.status)
    assert not set(started(p2)) & set(started(p1))
    assert p2.stop == ()
    pruned1 = {(t["batchSize"], t["seed"]) for t in p1.status["trials"] if t["phase"] == "Pruned"}
    pruned2 = {(t["batchSize"], t["seed"]) for t in p2.status["trials"] if t["phase"] == "Pruned"}
    assert pruned1 <= pruned2


def test_an_observed_pruned_trial_is_not_stopped_again():
    """A backend that reports a trial it stopped as Pruned (the local runner) gets no stop."""
    s = make_sweep(batchSizes=[4, 64], seeds=1, parallelism=2)
    k = TrialKey(64, 0)
    obs = {TrialKey(4, 0): reached(4, 0, 800),
           k: Observation(k, Phase.Pruned, steps=60, reason="cannot win")}
    p = plan(s, obs)
    assert p.stop == () and started(p) == []
    assert p.status["trials"][1]["phase"] == "Pruned"
    assert p.status["sfoSaved"] == 64 * (4000 - 60)


def test_a_failed_trial_that_could_still_be_the_answer_fails_the_sweep():
    s = make_sweep(pruning={"sfoBound": False})
    obs = _complete(s)
    obs[TrialKey(4, 1)] = Observation(TrialKey(4, 1), Phase.Failed, reason="exit 1 (crash)")
    st_ = plan(s, obs).status
    ready = st_["conditions"][0]
    assert st_["phase"] == "Failed" and (ready["status"], ready["reason"]) == (
        "False", "TrialsFailed")
    assert "batch size(s) 4," in ready["message"]
    # A failed seed far from the answer, beside one that finished there, leaves it sound.
    obs = _complete(s)
    obs[TrialKey(64, 1)] = Observation(TrialKey(64, 1), Phase.Failed, reason="exit 1 (crash)")
    st_ = plan(s, obs).status
    assert st_["phase"] == "Succeeded" and st_["conditions"][0]["reason"] == "Resolved"
    assert any("failed at batch size(s) 64" in w for w in st_["warnings"])
    # A batch size whose only trials failed has no evidence at all: it could be the answer.
    obs = {k: o for k, o in _complete(s).items() if k.batch_size != 64}
    for seed in (0, 1):
        obs[TrialKey(64, seed)] = Observation(TrialKey(64, seed), Phase.Failed, reason="oom")
    assert plan(s, obs).status["conditions"][0]["reason"] == "TrialsFailed"


def test_each_trial_says_where_it_ran_and_mixed_hardware_is_a_warning():
    s = make_sweep(batchSizes=[4, 8], seeds=1, pruning={"sfoBound": False})
    intel = {"device": "cpu", "cpu": "Intel Xeon Platinum", "isa": "AVX512", "torch": "2.14.1",
             "threads": 1}
    amd = {**intel, "cpu": "AMD EPYC 7763", "isa": "AVX2"}
    obs = {TrialKey(4, 0): Observation(TrialKey(4, 0), Phase.Reached, steps=900,
                                       result={"hardware": intel}),
           TrialKey(8, 0): Observation(TrialKey(8, 0), Phase.Reached, steps=500,
                                       result={"hardware": {**amd, "cpu": "x" * 500}})}
    rows = {t["batchSize"]: t for t in plan(s, obs).status["trials"]}
    assert rows[4]["hardware"].startswith("cpu Intel Xeon Platinum (AVX512), 1 thread")
    assert "hardware" not in rows[8] or "x" * 50 not in rows[8]["hardware"]
    obs[TrialKey(8, 0)] = Observation(TrialKey(8, 0), Phase.Reached, steps=500,
                                      result={"hardware": amd})
    status = plan(s, obs).status
    (warning,) = [w for w in status["warnings"] if "different hardware" in w]
    assert "Intel Xeon Platinum" in warning and "AMD EPYC 7763" in warning
    assert "(b=4/s0)" in warning and "(b=8/s0)" in warning
    # Kept when the result is gone (the Job deleted): the status remembers it.
    again = plan(s, {}, previous_status=status).status
    assert {t["batchSize"]: t["hardware"] for t in again["trials"]}[8].startswith("cpu AMD")


# ---------------------------------------------------------------------------------------------
# The status against the CRD's status schema
# ---------------------------------------------------------------------------------------------


def _statuses() -> dict[str, tuple[dict, dict]]:
    """(manifest, status) of sweeps in each state the status can describe."""
    estimate = {"targets": [{"name": "rms", "optimizer": "rmsprop", "learningRate": 1e-4}]}
    ref_manifest = sweep_manifest(pruning={"sfoBound": False}, estimate=estimate)
    ref_sweep = parse_sweep(ref_manifest)
    ref = plan(ref_sweep, _complete(ref_sweep)).status
    target_manifest = sweep_manifest(reference={"sweep": "ref"})
    target = parse_sweep(target_manifest)
    fast_manifest = sweep_manifest(reference={"sweep": "ref"}, optimizer={
        "name": "rmsprop", "generator": {"learningRate": 0.1},
        "discriminator": {"learningRate": 0.1}})
    obs = {TrialKey(2, 0): reached(2, 0, 900), TrialKey(4, 0): running(4, 0, 120)}
    censored_manifest = sweep_manifest(batchSizes=[2, 4], seeds=1)
    censored = parse_sweep(censored_manifest)
    adaptive_manifest = sweep_manifest(strategy={"type": "adaptive"})
    return {
        "reference": (ref_manifest, ref),
        "predicted": (target_manifest,
                      plan(target, obs, reference=reference_from_status(ref)).status),
        # a forged reference whose interval overflows every prediction: no interval, no null
        "overflowing": (fast_manifest, plan(parse_sweep(fast_manifest), obs,
                                            reference=ReferenceStatus(
                                                5000.0, 1000, 1797, (1.0, 1.5e308))).status),
        "overflowing alone": (fast_manifest, plan(parse_sweep(fast_manifest), obs,
                                                  reference=ReferenceStatus(
                                                      1.5e308, 1000, 1797)).status),
        "failed": (censored_manifest, plan(censored, {
            k: Observation(k, Phase.Censored, steps=4000, source="direct")
            for k in censored.trials()}).status),
        "adaptive": (adaptive_manifest, plan(parse_sweep(adaptive_manifest), {}).status),
    }


@pytest.mark.parametrize("case", ["reference", "predicted", "overflowing",
                                  "overflowing alone", "failed", "adaptive"])
def test_the_status_fits_the_crds_status_schema(case):
    """What the planner writes is what the API server keeps: no field the schema lacks (it
    would be pruned) and no null where the schema has none (the patch would be refused)."""
    from crd_tools import schema_errors

    manifest, status = _statuses()[case]
    assert schema_errors({**manifest, "status": status}) == []
    cb = status["criticalBatchSize"]
    if case == "predicted":
        assert cb["predictedInterval"][0] <= cb["predicted"] <= cb["predictedInterval"][1]
    if case == "overflowing":
        assert cb["predicted"] is not None and cb["predictedInterval"] is None
    if case == "overflowing alone":  # no prediction, and no grid point standing for one
        assert cb["predicted"] is None and cb["predictedGrid"] is None
        assert any("overflows" in w for w in status["warnings"])
    if case == "reference":
        assert cb["noiseRatioInterval"] and cb["estimates"][0]["batchSizeInterval"]
