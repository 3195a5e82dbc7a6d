"""The operator end to end: kopf against kmock, trainers faked over real HTTP (see harness.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fakes import NS, Behaviour, FakeCluster, FakePrometheus, model_steps
from harness import (
    OPERATOR_RBAC,
    SWEEPS,
    api_calls,
    create_sweep,
    delete_sweep,
    full_sweep_scenario,
    job_posts,
    operator,
    patch_spec,
    phase_is,
    posted_events,
    status,
    wait_for,
)
from sweeps import sweep_manifest

from critbatch import science
from critbatch_operator import opmetrics

pytestmark = pytest.mark.timeout(120)


def trial_rows(st):
    return {(t["batchSize"], t["seed"]): t for t in st["trials"]}


def reasons(k):
    return Counter(reason for _, reason, _ in posted_events(k))


async def test_six_batch_sizes_two_seeds_with_a_restart_measure_b_star(k):
    r = await full_sweep_scenario(k, restart_after=4)
    st = r.status
    assert st["phase"] == "Succeeded" and st["trialsDone"] == st["trialsTotal"] == 12
    assert st["criticalBatchSize"]["measured"] == r.expected_measured == 4
    assert st["criticalBatchSize"]["fitted"] == pytest.approx(3.0, rel=0.1)
    assert st["criticalBatchSize"]["generatorParams"] == 3_576_704
    # No Job was POSTed twice, across the restart too; pruned-before-start trials never were.
    assert [n for n, c in Counter(r.posts).items() if c > 1] == []
    pruned = {(t["batchSize"], t["seed"]) for t in st["trials"] if t["phase"] == "Pruned"}
    assert pruned and st["sfoSaved"] > 0
    assert len(r.posts) <= 12
    # Every result says where it came from; the fake trainers expose both routes.
    assert {t["source"] for t in st["trials"] if t["phase"] == "Reached"} <= {
        "direct", "termination-message"}
    cbs = st["criticalBatchSize"]
    assert cbs["mostProbable"] == 4 and 4 in cbs["plausible"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        ("True", "Resolved", 1) if cbs["resolved"] else ("False", "Unresolved", 1))
    assert ready["lastTransitionTime"]
    # Jobs are owned by the sweep, so the garbage collector deletes them with it.
    uid = r.sweep["metadata"]["uid"]
    for job in r.jobs.values():
        (ref,) = job["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "CriticalBatchSweep", "demo", uid, True)
    # Events for start, finish, prune and b*.
    ev = Counter(reason for _, reason, _ in r.events)
    # Posted by the reconcile itself, so the restart loses none: one per Job created.
    assert ev["TrialCreated"] == len(r.posts)
    assert ev["TrialReached"] >= 2 and ev["TrialPruned"] >= 1
    assert ev["CriticalBatchSizeResolved"] + ev["CriticalBatchSizeUnresolved"] == 1
    # The operator's own metrics.
    sample = opmetrics.REGISTRY.get_sample_value
    demo = {"namespace": "default", "sweep": "demo", "campaign": ""}
    for kind in ("measured", "most_probable"):
        assert sample("critbatch_operator_critical_batch_size", {**demo, "kind": kind}) == 4
    assert sample("critbatch_operator_critical_batch_size_resolved",
                  demo) == float(cbs["resolved"])
    assert sample("critbatch_operator_trials", {**demo, "phase": "Reached"}) == sum(
        1 for t in st["trials"] if t["phase"] == "Reached")
    assert sample("critbatch_operator_reconcile_duration_seconds_count") > 0
    assert sample("critbatch_operator_sweeps", {"phase": "Succeeded"}) >= 1
    # The operator made no API call beyond what its RBAC grants.
    assert set(r.calls) <= OPERATOR_RBAC, set(r.calls) - OPERATOR_RBAC


async def test_an_adaptive_sweep_starts_what_it_chooses_and_survives_a_restart(k):
    r = await full_sweep_scenario(k, restart_after=2, seeds=3,
                                  strategy={"type": "adaptive", "maxTrials": 10})
    st = r.status
    started = [(t["batchSize"], t["seed"]) for t in st["trials"]]
    assert st["phase"] == "Succeeded" and st["trialsMax"] == 10
    assert 4 <= len(started) <= 10 and len(set(started)) == len(started)
    assert {(2, 0), (8, 0), (32, 0), (64, 0)} <= set(started)  # the initial design
    assert all(t["selectedBecause"] for t in st["trials"])
    # Every Job POSTed once, across the restart, and only for trials the strategy chose.
    assert [n for n, c in Counter(r.posts).items() if c > 1] == []
    assert len(r.posts) <= len(started)
    cbs = st["criticalBatchSize"]
    assert cbs["mostProbable"] in (2, 4, 8) and cbs["probabilities"]
    assert set(r.calls) <= OPERATOR_RBAC


async def test_two_trials_per_gpu_share_a_job_and_still_measure_b_star(k):
    r = await full_sweep_scenario(k, restart_after=4, trials_per_gpu=2)
    st = r.status
    assert st["phase"] == "Succeeded" and st["trialsDone"] == 12
    assert st["criticalBatchSize"]["measured"] == r.expected_measured == 4
    assert st["criticalBatchSize"]["fitted"] == pytest.approx(3.0, rel=0.1)
    # Each Job runs a pair of trials, and each was POSTed once.
    assert [n for n, c in Counter(r.posts).items() if c > 1] == []
    assert len(r.posts) <= 6
    jobs = Counter(t["job"] for t in st["trials"])
    assert set(jobs.values()) == {2}
    for job in r.jobs.values():
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert len(args[args.index("--trials") + 1].split(",")) == 2
    # Their pods' shared endpoint told each trial's result apart.
    rows = [t for t in st["trials"] if t["phase"] == "Reached"]
    assert rows and all(t["steps"] == model_steps(t["batchSize"], t["seed"]) for t in rows)
    assert {t["phase"] for t in st["trials"]} <= {"Reached", "Pruned"}
    assert Counter(reason for _, reason, _ in r.events)["TrialCreated"] == len(r.posts)


async def test_results_from_prometheus_and_a_disagreement_is_an_event(k):
    body = sweep_manifest("prom", batchSizes=[4, 8, 16], seeds=1, parallelism=3,
                          pruning={"sfoBound": False})
    behaviour = Behaviour(corrupt_messages={(8, 0)})
    async with FakeCluster(k, behaviour) as cluster:
        prom = FakePrometheus(cluster)
        try:
            async with operator(k, prometheus_url=prom.url):
                await create_sweep(k, body)
                await wait_for(phase_is(k, "prom", "Succeeded"), what="sweep done")
                await wait_for(lambda: reasons(k)["ResultDisagreement"], what="the Event")
        finally:
            prom.close()
    st = status(k, "prom")
    assert {t["source"] for t in st["trials"]} == {"prometheus"}
    assert trial_rows(st)[(8, 0)]["steps"] == 620
    assert any('sweep="prom"' in q and 'namespace="default"' in q for q in prom.queries)
    warnings = [m for t, r, m in posted_events(k) if r == "ResultDisagreement"]
    assert len(warnings) == 1 and "batch size 8" in warnings[0] and "627" in warnings[0]


async def test_prometheus_down_keeps_state_says_so_and_recovers(k):
    body = sweep_manifest("outage", batchSizes=[4, 8], seeds=1, parallelism=2,
                          pruning={"sfoBound": False})
    async with FakeCluster(k, Behaviour(steps_per_second=1500)) as cluster:
        prom = FakePrometheus(cluster)
        prom.down = True
        try:
            async with operator(k, prometheus_url=prom.url, max_backoff=0.8):
                await create_sweep(k, body)

                def degraded():
                    c = next((c for c in status(k, "outage").get("conditions", [])
                              if c["type"] == "Degraded"), {})
                    return c.get("status") == "True" and c.get("reason") == "MetricsUnavailable"

                await wait_for(degraded, what="Degraded=MetricsUnavailable")
                # Results still arrive through the termination messages.
                await wait_for(phase_is(k, "outage", "Succeeded"), what="sweep done")
                st = status(k, "outage")
                assert {t["source"] for t in st["trials"]} == {"termination-message"}
                assert st["criticalBatchSize"]["measured"] == 4
                # Backoff: far fewer queries than reconciles.
                queries_down = len(prom.queries)
                prom.down = False
                await wait_for(lambda: not degraded(), what="Degraded to clear")
        finally:
            prom.close()
    reconciles = sum(1 for v, _, p in api_calls(k) if (v, p) == ("list", "jobs"))
    assert 1 <= queries_down < reconciles
    assert reasons(k)["MetricsUnavailable"] >= 1


async def test_a_failing_trial_is_retried_by_its_job_then_failed_with_the_reason(k):
    body = sweep_manifest("flaky", batchSizes=[4, 8], seeds=1, parallelism=2,
                          pruning={"sfoBound": False}, trainer={"backoffLimit": 1})
    async with FakeCluster(k, Behaviour(failures={(8, 0): 5})), operator(k):
        await create_sweep(k, body)
        await wait_for(phase_is(k, "flaky", "Succeeded", "Failed"), what="sweep done")
    st = status(k, "flaky")
    row = trial_rows(st)[(8, 0)]
    assert row["phase"] == "Failed" and row["restarts"] == 2
    assert "BackoffLimitExceeded" in row["reason"] and "out of memory" in row["reason"]
    assert job_posts(k).count("flaky-b8-s0") == 1  # retries are the Job's, not new Jobs
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "TrialsFailed")
    assert reasons(k)["TrialFailed"] == 1


async def test_appending_batch_sizes_and_seeds_starts_only_the_new_trials(k):
    body = sweep_manifest("grow", batchSizes=[4, 8], seeds=1, parallelism=4,
                          pruning={"sfoBound": False})
    async with FakeCluster(k), operator(k):
        await create_sweep(k, body)
        await wait_for(phase_is(k, "grow", "Succeeded"), what="first sweep done")
        first = set(job_posts(k))
        await patch_spec(k, "grow", {"batchSizes": [4, 8, 16], "seeds": 2})
        await wait_for(lambda: status(k, "grow").get("trialsTotal") == 6
                       and status(k, "grow").get("phase") == "Succeeded",
                       what="grown sweep done")
    new = [n for n in job_posts(k) if n not in first]
    assert sorted(new) == ["grow-b16-s0", "grow-b16-s1", "grow-b4-s1", "grow-b8-s1"]
    assert len(job_posts(k)) == 6
    st = status(k, "grow")
    assert st["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in st["conditions"])


@pytest.mark.parametrize(("spec", "trainer", "field"), [
    ({"batchSizes": [2, 4096]}, {}, "spec.batchSizes[1]"),
    ({}, {"model": "biggan", "imageSize": 256}, "spec.trainer.imageSize"),
    ({}, {"dataset": {"name": "lsun", "pvc": "lsun"}}, "spec.trainer.inception"),
    ({}, {"image": None}, "spec.trainer.image"),  # and the operator has no default image
])
async def test_invalid_spec_sets_ready_false_invalid_spec_and_creates_no_job(k, spec, trainer,
                                                                            field):
    body = sweep_manifest("bad", trainer=trainer, **spec)
    async with FakeCluster(k), operator(k):
        await create_sweep(k, body)
        await wait_for(phase_is(k, "bad", "Invalid"), what="InvalidSpec")
        await asyncio.sleep(0.5)  # a few more reconciles
    st = status(k, "bad")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith(field + ":")
    assert job_posts(k) == []
    invalid = [m for t, r, m in posted_events(k) if r == "InvalidSpec"]
    assert len(invalid) == 1 and invalid[0].startswith(field)


async def test_deleting_the_sweep_leaves_its_jobs_to_the_garbage_collector(k):
    body = sweep_manifest("gone", batchSizes=[4, 8, 16, 32], seeds=1, parallelism=2)
    async with FakeCluster(k, Behaviour(steps_per_second=200)) as cluster, operator(k):
        created = await create_sweep(k, body)
        await wait_for(lambda: len(cluster.jobs()) == 2, what="two jobs")
        await delete_sweep(k, "gone")
        await wait_for(lambda: k.objects[SWEEPS, NS, "gone"].deleted, what="deleted")
        posts = len(job_posts(k))
        await asyncio.sleep(0.8)
        assert len(job_posts(k)) == posts  # nothing new for a deleted sweep
        for job in cluster.jobs().values():
            (ref,) = job["metadata"]["ownerReferences"]
            assert ref["uid"] == created["metadata"]["uid"]
            assert ref["blockOwnerDeletion"] is True


async def test_a_reference_sweep_predicts_b_star_before_any_trial_finishes(k):
    ref = sweep_manifest("reference", batchSizes=[4, 8], seeds=1, pruning={"sfoBound": False})
    body = sweep_manifest("target", optimizer={"name": "rmsprop"},
                          reference={"sweep": "reference"})
    async with FakeCluster(k), operator(k):
        await create_sweep(k, ref)
        await wait_for(lambda: status(k, "reference").get("criticalBatchSize", {}).get(
            "noiseRatio"), what="the reference's noise ratio")
        await create_sweep(k, body)
        await wait_for(lambda: status(k, "target").get("criticalBatchSize", {}).get(
            "predicted"), what="a prediction")
    cb = status(k, "reference")["criticalBatchSize"]
    want = science.estimate_batch_size(cb["noiseRatio"], science.OptimizerSetting(
        "rmsprop", 1e-4, 0.0, 0.99), cb["generatorParams"], cb["datasetSize"])
    history = [v for v in k.objects[SWEEPS, NS, "target"].history if v is not None]
    first = next(v["status"] for v in history if (v.get("status") or {}).get(
        "criticalBatchSize", {}).get("predicted"))
    assert first["criticalBatchSize"]["predicted"] == pytest.approx(want, rel=1e-4)
    assert first["trialsDone"] == 0
    assert ("get", "critbatch.dev", "criticalbatchsweeps") in api_calls(k)


async def test_an_invalid_append_keeps_the_results_and_starts_nothing(k):
    body = sweep_manifest("keep", batchSizes=[4, 8], seeds=1, parallelism=2,
                          pruning={"sfoBound": False})
    async with FakeCluster(k), operator(k):
        await create_sweep(k, body)
        await wait_for(phase_is(k, "keep", "Succeeded"), what="sweep done")
        await patch_spec(k, "keep", {"batchSizes": [4, 8, 4096]})
        await wait_for(phase_is(k, "keep", "Invalid"), what="InvalidSpec")
        await asyncio.sleep(0.5)
    st = status(k, "keep")
    assert st["trialsDone"] == 2 and st["criticalBatchSize"]["measured"] == 4
    assert [t["phase"] for t in st["trials"]] == ["Reached", "Reached"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and ready["message"].startswith("spec.batchSizes[2]")
    assert ready["observedGeneration"] == 2
    assert sorted(job_posts(k)) == ["keep-b4-s0", "keep-b8-s0"]
