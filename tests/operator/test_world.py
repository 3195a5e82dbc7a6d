"""From Jobs, pods and metrics to trial observations (pure), and the operator's configuration."""

from __future__ import annotations

import json
import math

import pytest
from sweeps import sweep_manifest

from critbatch.metrics import TrialMetrics
from critbatch.planner import Phase, plan
from critbatch.spec import parse_sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.__main__ import parse_args
from critbatch_operator.config import Config
from critbatch_operator.jobs import build_job
from critbatch_operator.observations import (
    Termination,
    late_disagreements,
    observe,
    observe_trial,
    termination_result,
    termination_results,
)
from critbatch_operator.world import World, group_objects, metrics_source, scrape_targets

KEY = TrialKey(8, 0)
RESULT = {"sweep": "demo", "batch_size": 8, "seed": 0, "reached": True, "steps": 620,
          "interpolated_steps": None, "sfo": 4960, "fid": 48.0, "threshold": 50.0,
          "max_steps": 4000, "wall_seconds": 3.0, "generator_params": 1000, "dataset_size": 1797}


def job(conditions=(), **status):
    return {"metadata": {"name": "demo-b8-s0"}, "spec": {},
            "status": {"conditions": [dict(c) for c in conditions], **status}}


def pod(phase="Running", exit_code=None, message=None, ip="10.0.0.7", port=9100):
    state = {"running": {}} if exit_code is None else {
        "terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0
                       else "Error", "message": message}}
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "trainer", "ports": [
                {"name": "metrics", "containerPort": port}]}]},
            "status": {"phase": phase, "podIP": ip,
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def owned_sweep(name="demo", uid="uid-demo", **spec):
    """A parsed sweep with the uid the API server would give it."""
    manifest = sweep_manifest(name, **spec)
    manifest["metadata"]["uid"] = uid
    return parse_sweep(manifest)


def pod_of(j, **kw):
    """A pod of Job `j`, as the Job controller makes it: its labels, owned by the Job."""
    tpl = j["spec"]["template"]["metadata"]
    meta = j["metadata"]
    return {**pod(**kw), "metadata": {
        "name": f"{meta['name']}-x", "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": tpl["labels"], "annotations": tpl.get("annotations", {}),
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                             "uid": meta.get("uid"), "controller": True}]}}


COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
           "message": "Job has reached the specified backoff limit"}]


def test_running_job_with_metrics_reports_progress():
    m = TrialMetrics(step=120, value=180.0, reached=False, finished=False)
    obs, note = observe_trial(KEY, job(active=1), [pod()], metrics=m, source="direct")
    assert (obs.phase, obs.steps, obs.value, obs.source) == (Phase.Running, 120, 180.0,
                                                             "direct")
    assert note is None


def test_metrics_that_show_the_target_reached_decide_the_trial_while_it_lingers():
    m = TrialMetrics(step=620, value=48.0, reached=True, finished=True, steps_to_threshold=620)
    obs, _ = observe_trial(KEY, job(active=1), [pod()], metrics=m, source="prometheus")
    assert (obs.phase, obs.steps, obs.source) == (Phase.Reached, 620, "prometheus")


def test_censored_by_metrics():
    m = TrialMetrics(step=4000, value=90.0, reached=False, finished=True, max_steps=4000)
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, "")],
                           metrics=m, source="prometheus")
    assert (obs.phase, obs.steps) == (Phase.Censored, 4000)


def test_termination_message_is_the_fallback_and_is_labelled_so():
    msg = json.dumps(RESULT)
    obs, note = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, msg)],
                              metrics=None, source=None)
    assert (obs.phase, obs.steps, obs.source) == (Phase.Reached, 620, "termination-message")
    assert obs.result["generator_params"] == 1000 and note is None


def test_disagreement_between_metrics_and_termination_message_is_noted():
    m = TrialMetrics(step=630, reached=True, finished=True, steps_to_threshold=630)
    obs, note = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, json.dumps(RESULT))],
                              metrics=m, source="prometheus")
    assert obs.source == "prometheus" and obs.steps == 630
    assert "630" in note and "620" in note and "termination message" in note


def test_failed_job_reports_the_reason_and_the_last_crash():
    crash = pod("Failed", 1, "Traceback...\nRuntimeError: CUDA error: out of memory")
    obs, _ = observe_trial(KEY, job(FAILED, failed=3), [crash], metrics=None, source="direct")
    assert obs.phase is Phase.Failed and obs.restarts == 3
    assert obs.reason.startswith("BackoffLimitExceeded: Job has reached")
    assert "exit code 1" in obs.reason and "out of memory" in obs.reason


def test_a_complete_job_whose_pod_has_not_ended_yet_waits_then_is_lost_when_pods_are_gone():
    # The pods were listed after the Job: a stale pod status is waited for.
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Running")], metrics=None, source="direct")
    assert obs.phase is Phase.Running and obs.reason == "finished; waiting for its result"
    obs, _ = observe_trial(KEY, job(COMPLETE), [], metrics=None, source="direct")
    assert obs.phase is Phase.Failed and "pods are gone" in obs.reason
    # With the metrics source down, a missing pod is no proof: wait.
    obs, _ = observe_trial(KEY, job(COMPLETE), [], metrics=None, source=None)
    assert obs.phase is Phase.Running


def test_suspended_and_unscheduled_jobs_are_pending():
    suspended = {**job(), "spec": {"suspend": True}}
    obs, _ = observe_trial(KEY, suspended, [], metrics=None, source="direct")
    assert obs.phase is Phase.Pending and "queue" in obs.reason
    obs, _ = observe_trial(KEY, job(), [pod("Pending")], metrics=None, source="direct")
    assert obs.phase is Phase.Pending


def test_termination_result_ignores_crashes_and_garbage():
    assert termination_result(KEY, [pod("Failed", 1, json.dumps(RESULT))]) is None
    assert termination_result(KEY, [pod("Succeeded", 0, "{\"foo\": 1}")]) is None
    assert termination_result(KEY, [pod("Succeeded", 0, "log line\n" + json.dumps(RESULT))])[
        "steps"] == 620


def test_a_pods_termination_message_holds_one_result_line_per_trial():
    other = {**RESULT, "batch_size": 16, "steps": 555}
    message = json.dumps(RESULT) + "\n" + json.dumps(other)
    assert termination_result(KEY, [pod("Succeeded", 0, message)])["steps"] == 620
    assert termination_result(TrialKey(16, 0), [pod("Succeeded", 0, message)])["steps"] == 555
    assert termination_result(TrialKey(32, 0), [pod("Succeeded", 0, message)]) is None


def test_a_job_running_several_trials_stands_for_each_and_its_pod_is_scraped_once():
    sweep = owned_sweep("demo", trialsPerGPU=2)
    both = (KEY, TrialKey(16, 0))
    j = build_job(sweep, both)
    world = group_objects(sweep, [j], [pod_of(j)])
    assert list(world.jobs) == list(world.pods) == list(both)
    assert set(scrape_targets(world, 9100).values()) == {"http://10.0.0.7:9100/metrics"}
    world.source = "direct"
    world.metrics = {(8, 0): TrialMetrics(step=100.0), (16, 0): TrialMetrics(step=40.0)}
    obs, _ = observe(sweep, world)
    assert {k: (o.steps, o.job) for k, o in obs.items()} == {
        KEY: (100.0, "demo-b8-s0"), TrialKey(16, 0): (40.0, "demo-b8-s0")}


def test_objects_are_grouped_by_trial_labels_and_strangers_ignored():
    sweep = owned_sweep("demo")
    j = build_job(sweep, KEY)
    other = build_job(owned_sweep("other", uid="uid-other"), KEY)
    world = group_objects(sweep, [j, other], [pod_of(j), pod_of(other)])
    assert list(world.jobs) == [KEY] and list(world.pods) == [KEY]
    assert scrape_targets(world, 9100) == {KEY: "http://10.0.0.7:9100/metrics"}
    obs, _ = observe(sweep, world)
    assert obs[KEY].phase is Phase.Running


BAD_TRIALS_ANNOTATIONS = ["8:x", "8", "8:0:1", ",", "-1:0", "8:0,8:0", " ", 8,
                          ",".join(f"{b}:0" for b in range(1, 10)), "8:0," * 50_000 + "8:0"]


@pytest.mark.parametrize("listed", BAD_TRIALS_ANNOTATIONS,
                         ids=["word", "no seed", "three parts", "empty pairs", "negative",
                              "twice", "blank", "not text", "nine pairs", "oversized"])
def test_a_job_whose_trials_annotation_cannot_be_read_is_not_a_trial(listed):
    sweep = owned_sweep("demo")
    j = build_job(sweep, KEY)
    j["metadata"]["annotations"]["critbatch.dev/trials"] = listed
    p = pod_of(j)
    p["metadata"]["annotations"] = {**p["metadata"]["annotations"],
                                    "critbatch.dev/trials": listed}
    world = group_objects(sweep, [j], [p])
    assert world.jobs == {} and world.pods == {}
    obs, _ = observe(sweep, world)
    assert obs == {}
    assert plan(sweep, obs).status["phase"] == "Running"  # the trial is planned as new


def test_deleting_jobs_are_not_counted():
    sweep = owned_sweep("demo")
    j = build_job(sweep, KEY)
    assert list(group_objects(sweep, [j], []).jobs) == [KEY]
    j["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert group_objects(sweep, [j], []).jobs == {}


def test_metrics_source_choice():
    direct = parse_sweep(sweep_manifest("a", metrics={"source": "direct"}))
    auto = parse_sweep(sweep_manifest("a"))
    own = parse_sweep(sweep_manifest("a", metrics={"prometheusURL": "http://p:9090"}))
    assert metrics_source(direct, "http://op:9090") == ("direct", None)
    assert metrics_source(auto, None) == ("direct", None)
    assert metrics_source(auto, "http://op:9090") == ("prometheus", "http://op:9090")
    assert metrics_source(own, "http://op:9090") == ("prometheus", "http://p:9090")


def test_world_defaults_are_empty():
    w = World()
    assert w.jobs == {} and w.metrics == {} and w.problems == []


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_config_from_environment():
    cfg = Config.from_env({"CRITBATCH_PROMETHEUS_URL": "http://prom:9090",
                           "CRITBATCH_NAMESPACES": "a, b", "CRITBATCH_RECONCILE_INTERVAL": "2.5",
                           "CRITBATCH_METRICS_PORT": "9000"})
    assert cfg.prometheus_url == "http://prom:9090" and cfg.namespaces == ("a", "b")
    assert cfg.reconcile_interval == 2.5 and cfg.metrics_port == 9000
    assert Config.from_env({}) == Config()
    with pytest.raises(ValueError, match="CRITBATCH_METRICS_PORT"):
        Config.from_env({"CRITBATCH_METRICS_PORT": "many"})
    with pytest.raises(ValueError, match="CRITBATCH_PRIORITY"):
        Config.from_env({"CRITBATCH_PRIORITY": "high"})
    assert Config.from_env({"CRITBATCH_PRIORITY": "-3", "CRITBATCH_PEERING": "p"}).priority == -3


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("CRITBATCH_PROMETHEUS_URL", "http://env:9090")
    monkeypatch.setenv("CRITBATCH_HEALTH_PORT", "7000")
    cfg, _ = parse_args(["--prometheus-url", "http://flag:9090", "-n", "ml", "-n", "research",
                         "--metrics-port", "0"])
    assert cfg.prometheus_url == "http://flag:9090" and cfg.namespaces == ("ml", "research")
    assert cfg.health_port == 7000 and cfg.metrics_port == 0


@pytest.mark.parametrize("argv", [["--reconcile-interval", "0"], ["--metrics-port", "70000"],
                                  ["--bogus"]])
def test_bad_flags_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "critbatch-operator" in capsys.readouterr().err


def test_operator_metrics_follow_the_status_and_forget_deleted_sweeps():
    from critbatch_operator import opmetrics

    status = {"phase": "Running", "sfoSaved": 1200.0,
              "trials": [{"phase": "Reached"}, {"phase": "Reached"}, {"phase": "Running"}],
              "criticalBatchSize": {"measured": 8, "fitted": 6.5, "predicted": None}}
    opmetrics.record_status("ns", "m", status)
    sample = opmetrics.REGISTRY.get_sample_value
    m = {"namespace": "ns", "sweep": "m", "campaign": ""}
    assert sample("critbatch_operator_trials", {**m, "phase": "Reached"}) == 2
    assert sample("critbatch_operator_critical_batch_size", {**m, "kind": "fitted"}) == 6.5
    assert sample("critbatch_operator_critical_batch_size", {**m, "kind": "predicted"}) is None
    assert sample("critbatch_operator_sfo_saved", m) == 1200
    opmetrics.forget("ns", "m")
    assert sample("critbatch_operator_trials", {**m, "phase": "Reached"}) is None


def test_help_runs_without_a_cluster(capsys):
    from critbatch_operator.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--prometheus-url", "--metrics-port", "--health-port", "--namespace",
                 "--peering", "--trainer-image"):
        assert flag in out


# ---------------------------------------------------------------------------------------------
# Hostile input: foreign Jobs, refused metrics, termination messages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("owners", [None, [], [{"kind": "CriticalBatchSweep", "name": "demo",
                                                 "uid": "uid-of-a-deleted-sweep"}]],
                         ids=["no field", "none", "another uid"])
def test_a_job_with_the_trials_name_that_the_sweep_does_not_own_is_not_adopted(owners):
    sweep = owned_sweep("demo")
    foreign = build_job(sweep, KEY)
    foreign["metadata"]["uid"] = "uid-foreign-job"
    if owners is None:
        del foreign["metadata"]["ownerReferences"]
    else:
        foreign["metadata"]["ownerReferences"] = owners
    done = pod_of(foreign, phase="Succeeded", exit_code=0, message=json.dumps(RESULT))
    world = group_objects(sweep, [foreign], [done])
    assert world.jobs == {} and world.pods == {}
    assert list(world.foreign) == ["demo-b8-s0"]
    assert ("owned by CriticalBatchSweep demo" in world.foreign["demo-b8-s0"]) == bool(owners)
    assert observe(sweep, world)[0] == {}  # its result is not the trial's


def test_pods_count_only_when_a_counted_job_owns_them():
    sweep = owned_sweep("demo")
    j = build_job(sweep, KEY)
    j["metadata"]["uid"] = "uid-job"
    mine = pod_of(j)
    stray = {**mine, "metadata": {**mine["metadata"], "ownerReferences": []}}
    old = {**mine, "metadata": {**mine["metadata"], "ownerReferences": [
        {"kind": "Job", "name": "demo-b8-s0", "uid": "uid-of-an-older-job"}]}}
    world = group_objects(sweep, [j], [stray, old, mine])
    assert world.pods == {KEY: [mine]}


@pytest.mark.parametrize(("metrics", "why"), [
    (TrialMetrics(invalid="step +Inf"), "step +Inf"),
    (TrialMetrics(step=5000.0), "step 5000 above spec.target.maxSteps 4000"),
    (TrialMetrics(step=10.0, reached=True, steps_to_threshold=1e300),
     "steps_to_threshold 1e+300 above spec.target.maxSteps 4000"),
    (TrialMetrics(step=-1.0), "step -1"),
    (TrialMetrics(step=math.inf), "step +Inf"),
])
def test_refused_metrics_are_ignored_with_a_reason_and_a_problem(metrics, why):
    sweep = owned_sweep("demo")
    j = build_job(sweep, KEY)
    world = World(jobs={KEY: j}, pods={KEY: [pod_of(j)]}, metrics={(8, 0): metrics},
                  source="direct")
    obs, _ = observe(sweep, world)
    assert (obs[KEY].phase, obs[KEY].steps, obs[KEY].source) == (Phase.Running, None, None)
    assert obs[KEY].reason == f"metrics invalid ({why}): ignored"
    assert world.problems == [("MetricsInvalid", "direct metrics of 1 trial(s) refused and "
                                                 f"ignored (b=8 seed=0: {why})")]
    plan(sweep, obs)  # the planner takes what observe gives it


@pytest.mark.parametrize(("steps", "why"), [
    ("Infinity", "steps: must be a finite number >= 0, got Infinity"),
    ("-Infinity", "steps: must be a finite number >= 0, got -Infinity"),
    ("NaN", "steps: must be a finite number >= 0, got NaN"),
    ("-3", "steps: must be a finite number >= 0, got -3"),
    ("5000", "steps 5000 above spec.target.maxSteps 4000"),
    ("1e999", "steps: must be a finite number >= 0, got Infinity"),
    ('"620"', 'steps: expected a number, got "620"'),
])
def test_a_refused_result_in_the_termination_message_fails_the_trial(steps, why):
    line = json.dumps(RESULT).replace('"steps": 620', f'"steps": {steps}')
    obs, _ = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, line)],
                           metrics=None, source="direct", max_steps=4000)
    assert obs.phase is Phase.Failed
    assert obs.reason == f"MetricsInvalid: termination message: {why}"


@pytest.mark.parametrize(("message", "why"), [
    (json.dumps({k: v for k, v in RESULT.items() if k != "reached"}),
     "reached: missing (required: batch_size, seed, reached, steps)"),
    ('{"accuracy": 0.93}', "batch_size: missing (required: batch_size, seed, reached, steps)"),
    (json.dumps({**RESULT, "batch_size": True}), "batch_size: expected an integer >= 1, got true"),
    (json.dumps({**RESULT, "batch_size": "8"}), 'batch_size: expected an integer >= 1, got "8"'),
    (json.dumps({**RESULT, "reached": "yes"}), 'reached: expected true or false, got "yes"'),
    (json.dumps({**RESULT, "value": "high"}), 'value: expected an integer or a number or null, '
                                              'got "high"'),
    (json.dumps([RESULT]), "not a JSON object"),
    ("done: accuracy 0.93", "no JSON result line, got 'done: accuracy 0.93'"),
    ("[" * 100_000, "no JSON result line, got '" + "[" * 37 + "...'"),
    ("\x00\x1b[31m", "no JSON result line, got '[31m'"),
    ("{" + '"a":' * 10 + "1", "no JSON result line, got '{" + '"a":' * 9 + "...'"),
])
def test_what_a_trainer_wrote_instead_of_its_result_fails_the_trial_saying_what_it_broke(
        message, why):
    """A pod that exited 0 has said its last word: waiting cannot bring a result."""
    obs, _ = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, message)],
                           metrics=None, source="direct", max_steps=4000)
    assert obs.phase is Phase.Failed
    assert obs.reason == f"MetricsInvalid: termination message: {why}"
    assert obs.reason.isprintable() and len(obs.reason) <= 400


@pytest.mark.parametrize("message", ["", "  \n", None, 42])
def test_a_trainer_that_exits_0_without_a_result_fails_its_trial(message):
    obs, _ = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, message)],
                           metrics=None, source="direct", max_steps=4000)
    assert obs.phase is Phase.Failed
    assert obs.reason == ("ResultMissing: the trainer exited 0 without a result: the trial "
                          "protocol needs its result JSON in CRITBATCH_RESULT_FILE "
                          "(/dev/termination-log)")


def test_a_valid_line_for_the_trial_counts_whatever_else_the_message_holds():
    bad = json.dumps({**RESULT, "steps": -1})
    for message in (json.dumps(RESULT) + "\n" + bad, bad + "\n" + json.dumps(RESULT),
                    "log line\n" + json.dumps(RESULT)):
        assert termination_results(KEY, [pod("Succeeded", 0, message)], 4000) == Termination(
            result=RESULT)
    assert termination_results(KEY, [pod("Succeeded", 0, bad)], 4000) == Termination(
        problem="steps: must be a finite number >= 0, got -1")
    # No pod has exited 0 yet: nothing is known.
    assert termination_results(KEY, [pod(), pod("Failed", 1, "x")], 4000) == Termination()


def test_a_single_trials_pod_reporting_another_trial_or_sweep_is_refused():
    other = json.dumps({**RESULT, "batch_size": 16})
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, other)], metrics=None,
                           source="direct", max_steps=4000, sweep="demo")
    assert obs.phase is Phase.Failed and obs.reason == (
        "MetricsInvalid: termination message: batch size 16, seed 0: another trial's result "
        "(this one is batch size 8, seed 0)")
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, json.dumps(RESULT))],
                           metrics=None, source="direct", max_steps=4000, sweep="demo-2")
    assert obs.phase is Phase.Failed and obs.reason == (
        "MetricsInvalid: termination message: sweep \"demo\": another sweep's result "
        "(this is 'demo-2')")


def test_a_group_pods_lines_of_its_other_trials_are_theirs():
    mine, sibling = json.dumps(RESULT), json.dumps({**RESULT, "batch_size": 16, "steps": 555})
    ended = [pod("Succeeded", 0, sibling + "\n" + mine)]
    assert termination_result(KEY, ended, siblings={TrialKey(16, 0)})["steps"] == 620
    # Without this trial's line the result is missing, not the sibling's refused.
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, sibling)], metrics=None,
                           source="direct", siblings={TrialKey(16, 0)})
    assert obs.phase is Phase.Failed and obs.reason.startswith("ResultMissing: ")


def test_a_custom_trainers_result_gives_the_target_metrics_value():
    result = {"batch_size": 8, "seed": 0, "reached": True, "steps": 300, "metric": "accuracy",
              "value": 0.91, "goal": "maximize", "threshold": 0.9, "params": 12345}
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, json.dumps(result))],
                           metrics=None, source="direct", max_steps=4000, sweep="demo")
    assert (obs.phase, obs.steps, obs.value, obs.source) == (
        Phase.Reached, 300, 0.91, "termination-message")
    assert obs.result == result


def test_a_trainer_that_exits_2_failed_on_its_configuration_and_says_why():
    failed = [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
               "message": "Container trainer for pod default/demo-b8-s0-x failed with exit "
                          "code 2 matching FailJob rule at index 0"}]
    bad = pod("Failed", 2, "Traceback...\ntrain.py: error: CRITBATCH_TARGET_METRIC: "
                           "'accuracy' is not a metric this script reports")
    obs, _ = observe_trial(KEY, job(failed, failed=1), [bad], metrics=None, source="direct")
    assert obs.phase is Phase.Failed
    assert obs.reason == ("BadConfiguration: the trainer exited 2 (bad configuration, not "
                          "retried): train.py: error: CRITBATCH_TARGET_METRIC: 'accuracy' is "
                          "not a metric this script reports")


def test_a_nan_value_is_unknown_and_does_not_fail_the_trial():
    line = json.dumps({**RESULT, "reached": False, "fid": math.nan})
    obs, _ = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, line)],
                           metrics=None, source="direct", max_steps=4000)
    assert (obs.phase, obs.steps, obs.value) == (Phase.Censored, 620, None)


def test_a_crash_tail_is_printable_and_short():
    crash = pod("Failed", 1, "x\n\x1b[2J\x07" + "A" * 5000)
    obs, _ = observe_trial(KEY, job(FAILED, failed=1), [crash], metrics=None, source="direct")
    assert obs.reason.isprintable() and len(obs.reason) <= 400
    assert "\x1b" not in obs.reason and "..." in obs.reason


def test_disagreement_notes_survive_odd_values():
    m = TrialMetrics(step=None, reached=False, finished=True)
    obs, note = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, json.dumps(RESULT))],
                              metrics=m, source="prometheus", max_steps=4000)
    assert obs.phase is Phase.Censored and "steps=unknown" in note
    world = World(pods={KEY: [pod("Succeeded", 0, json.dumps(RESULT))]})
    status = {"trials": [{"batchSize": "x"}, {"batchSize": 8, "seed": 0, "phase": "Reached",
                                              "source": "direct", "steps": None}, "junk"]}
    assert late_disagreements(status, world) == []
