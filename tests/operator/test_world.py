"""From Jobs, pods and metrics to trial observations (pure), and the operator's configuration."""

from __future__ import annotations

import json

import pytest
from harness import sweep_manifest

from critbatch.metrics import TrialMetrics
from critbatch.planner import Phase
from critbatch.spec import TrialKey, parse_sweep
from critbatch_operator.__main__ import parse_args
from critbatch_operator.config import Config
from critbatch_operator.jobs import build_job
from critbatch_operator.world import (
    World,
    group_objects,
    metrics_source,
    observe,
    observe_trial,
    scrape_targets,
    termination_result,
)

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


COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
           "message": "Job has reached the specified backoff limit"}]


def test_running_job_with_metrics_reports_progress():
    m = TrialMetrics(step=120, fid=180.0, reached=False, finished=False)
    obs, note = observe_trial(KEY, job(active=1), [pod()], m, "direct")
    assert (obs.phase, obs.steps, obs.fid, obs.source) == (Phase.Running, 120, 180.0, "direct")
    assert note is None


def test_metrics_that_show_the_target_reached_decide_the_trial_while_it_lingers():
    m = TrialMetrics(step=620, fid=48.0, reached=True, finished=True, steps_to_threshold=620)
    obs, _ = observe_trial(KEY, job(active=1), [pod()], m, "prometheus")
    assert (obs.phase, obs.steps, obs.source) == (Phase.Reached, 620, "prometheus")


def test_censored_by_metrics():
    m = TrialMetrics(step=4000, fid=90.0, reached=False, finished=True, max_steps=4000)
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, "")], m, "prometheus")
    assert (obs.phase, obs.steps) == (Phase.Censored, 4000)


def test_termination_message_is_the_fallback_and_is_labelled_so():
    msg = json.dumps(RESULT)
    obs, note = observe_trial(KEY, job(COMPLETE, succeeded=1), [pod("Succeeded", 0, msg)],
                              None, None)
    assert (obs.phase, obs.steps, obs.source) == (Phase.Reached, 620, "termination-message")
    assert obs.result["generator_params"] == 1000 and note is None


def test_disagreement_between_metrics_and_termination_message_is_noted():
    m = TrialMetrics(step=630, reached=True, finished=True, steps_to_threshold=630)
    obs, note = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, json.dumps(RESULT))], m,
                              "prometheus")
    assert obs.source == "prometheus" and obs.steps == 630
    assert "630" in note and "620" in note and "termination message" in note


def test_failed_job_reports_the_reason_and_the_last_crash():
    crash = pod("Failed", 1, "Traceback...\nRuntimeError: CUDA error: out of memory")
    obs, _ = observe_trial(KEY, job(FAILED, failed=3), [crash], None, "direct")
    assert obs.phase is Phase.Failed and obs.restarts == 3
    assert obs.reason.startswith("BackoffLimitExceeded: Job has reached")
    assert "exit code 1" in obs.reason and "out of memory" in obs.reason


def test_a_complete_job_without_a_readable_result_waits_then_is_lost_when_pods_are_gone():
    obs, _ = observe_trial(KEY, job(COMPLETE), [pod("Succeeded", 0, "not json")], None,
                           "direct")
    assert obs.phase is Phase.Running and "waiting" in obs.reason
    obs, _ = observe_trial(KEY, job(COMPLETE), [], None, "direct")
    assert obs.phase is Phase.Failed and "pods are gone" in obs.reason
    # With the metrics source down, a missing pod is no proof: wait.
    obs, _ = observe_trial(KEY, job(COMPLETE), [], None, None)
    assert obs.phase is Phase.Running


def test_suspended_and_unscheduled_jobs_are_pending():
    suspended = {**job(), "spec": {"suspend": True}}
    obs, _ = observe_trial(KEY, suspended, [], None, "direct")
    assert obs.phase is Phase.Pending and "queue" in obs.reason
    obs, _ = observe_trial(KEY, job(), [pod("Pending")], None, "direct")
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
    sweep = parse_sweep(sweep_manifest("demo", trialsPerGPU=2))
    both = (KEY, TrialKey(16, 0))
    j = build_job(sweep, both)
    tpl = j["spec"]["template"]["metadata"]
    p = {**pod(), "metadata": {"name": "x", "labels": tpl["labels"],
                               "annotations": tpl["annotations"]}}
    world = group_objects(sweep, [j], [p])
    assert list(world.jobs) == list(world.pods) == list(both)
    assert set(scrape_targets(world, 9100).values()) == {"http://10.0.0.7:9100/metrics"}
    world.source = "direct"
    world.metrics = {(8, 0): TrialMetrics(step=100.0), (16, 0): TrialMetrics(step=40.0)}
    obs, _ = observe(sweep, world)
    assert {k: (o.steps, o.job) for k, o in obs.items()} == {
        KEY: (100.0, "demo-b8-s0"), TrialKey(16, 0): (40.0, "demo-b8-s0")}


def test_objects_are_grouped_by_trial_labels_and_strangers_ignored():
    sweep = parse_sweep(sweep_manifest("demo"))
    j = build_job(sweep, KEY)
    other = build_job(parse_sweep(sweep_manifest("other")), KEY)
    p = {**pod(), "metadata": {"name": "x", "labels": j["spec"]["template"]["metadata"][
        "labels"]}}
    world = group_objects(sweep, [j, other], [p])
    assert list(world.jobs) == [KEY] and list(world.pods) == [KEY]
    assert scrape_targets(world, 9100) == {KEY: "http://10.0.0.7:9100/metrics"}
    obs, _ = observe(sweep, world)
    assert obs[KEY].phase is Phase.Running


def test_deleting_jobs_are_not_counted():
    sweep = parse_sweep(sweep_manifest("demo"))
    j = build_job(sweep, KEY)
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
    assert sample("critbatch_operator_trials", {"namespace": "ns", "sweep": "m",
                                                "phase": "Reached"}) == 2
    assert sample("critbatch_operator_critical_batch_size",
                  {"namespace": "ns", "sweep": "m", "kind": "fitted"}) == 6.5
    assert sample("critbatch_operator_critical_batch_size",
                  {"namespace": "ns", "sweep": "m", "kind": "predicted"}) is None
    assert sample("critbatch_operator_sfo_saved", {"namespace": "ns", "sweep": "m"}) == 1200
    opmetrics.forget("ns", "m")
    assert sample("critbatch_operator_trials", {"namespace": "ns", "sweep": "m",
                                                "phase": "Reached"}) is None


def test_help_runs_without_a_cluster(capsys):
    from critbatch_operator.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--prometheus-url", "--metrics-port", "--health-port", "--namespace",
                 "--peering", "--trainer-image"):
        assert flag in out
