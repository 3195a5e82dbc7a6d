"""A sweep of the user's own trainer end to end: kopf against kmock, the fake trainers run
from the trial protocol's variables alone (see fakes.py), and trainers that break the protocol.
"""

from __future__ import annotations

from collections import Counter

import pytest
from fakes import Behaviour, FakeCluster, FakePrometheus, custom_manifest, expected_measured
from harness import (
    OPERATOR_RBAC,
    api_calls,
    create_sweep,
    operator,
    phase_is,
    posted_events,
    status,
    wait_for,
)

from critbatch.protocol import TrialSettings
from critbatch.vocabulary import Goal, TrialKey

pytestmark = pytest.mark.timeout(120)

GRID = (2, 4, 8, 16)


def trial_rows(st):
    return {(t["batchSize"], t["seed"]): t for t in st["trials"]}


def container_of(job):
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("source", ["direct", "prometheus"])
async def test_a_custom_trainers_sweep_measures_b_star_from_the_protocol(k, source):
    body = custom_manifest("mine", batchSizes=list(GRID), seeds=1, parallelism=4,
                           pruning={"sfoBound": False})
    async with FakeCluster(k) as cluster:
        prom = FakePrometheus(cluster)
        overrides = {"prometheus_url": prom.url} if source == "prometheus" else {}
        try:
            async with operator(k, **overrides):
                await create_sweep(k, body)
                await wait_for(phase_is(k, "mine", "Succeeded", "Failed"), what="sweep done")
                # Metrics may decide every trial before a result is read: the network's size
                # (the result's `params`) fills in at a later reconciliation.
                await wait_for(lambda: status(k, "mine")["criticalBatchSize"].get(
                    "generatorParams"), what="the results' params")
        finally:
            prom.close()
        jobs = cluster.jobs()
    st = status(k, "mine")
    assert st["phase"] == "Succeeded" and st["trialsDone"] == len(GRID)
    assert st["target"] == {"metric": "accuracy", "threshold": 0.9, "goal": "maximize"}
    rows = trial_rows(st)
    assert {r["phase"] for r in rows.values()} == {"Reached"}
    # The metrics (the protocol's series, the value as target_value) decided while the
    # trainers lingered, else their termination messages did.
    sources = Counter(r["source"] for r in rows.values())
    assert set(sources) <= {source, "termination-message"} and sources[source] >= 1
    assert all(r["value"] >= 0.9 for r in rows.values())
    assert st["criticalBatchSize"]["measured"] == expected_measured(GRID, 1, 4000)
    assert st["criticalBatchSize"]["generatorParams"] == 12_345  # the result's `params`
    # Every Job ran the user's command, and its trainer learned its trial from the variables.
    assert len(jobs) == len(GRID)
    for job in jobs.values():
        c = container_of(job)
        assert c["command"] == ["python", "-m", "classifier.train", "--quiet"]
        assert "args" not in c
        settings = TrialSettings.from_env({e["name"]: e["value"] for e in c["env"]})
        labels = job["metadata"]["labels"]
        assert settings.key == TrialKey(int(labels["critbatch.dev/batch-size"]),
                                        int(labels["critbatch.dev/seed"]))
        assert (settings.metric, settings.goal, settings.sweep) == ("accuracy", Goal.maximize,
                                                                    "mine")
    assert set(api_calls(k)) <= OPERATOR_RBAC


async def test_trainers_that_break_the_protocol_fail_their_trials_and_the_sweep_goes_on(k):
    body = custom_manifest("broken", batchSizes=[2, 4, 8, 16, 32, 64], seeds=1, parallelism=2,
                           pruning={"sfoBound": False}, trainer={"backoffLimit": 1})
    behaviour = Behaviour(
        # Without metrics the termination message is all there is to read.
        silent={(4, 0), (8, 0), (64, 0)},
        written={(4, 0): "", (8, 0): '{"accuracy": 0.93}'},
        exits={(16, 0): (1, "RuntimeError: boom"),
               (32, 0): (2, "train.py: error: CRITBATCH_TARGET_METRIC: unknown metric")})
    async with FakeCluster(k, behaviour), operator(k):
        await create_sweep(k, body)
        await wait_for(phase_is(k, "broken", "Succeeded", "Failed"), what="sweep done")
    rows = trial_rows(status(k, "broken"))
    assert {key: r["phase"] for key, r in rows.items()} == {
        (2, 0): "Reached", (4, 0): "Failed", (8, 0): "Failed", (16, 0): "Failed",
        (32, 0): "Failed", (64, 0): "Reached"}
    assert rows[(4, 0)]["reason"].startswith("ResultMissing: the trainer exited 0 without a "
                                             "result")
    assert rows[(8, 0)]["reason"] == ("MetricsInvalid: termination message: batch_size: "
                                      "missing (required: batch_size, seed, reached, steps)")
    crash = rows[(16, 0)]
    assert crash["reason"].startswith("BackoffLimitExceeded")
    assert "exit code 1" in crash["reason"] and "RuntimeError: boom" in crash["reason"]
    assert crash["restarts"] == 2  # retried by its Job, up to backoffLimit
    assert rows[(32, 0)]["reason"] == (
        "BadConfiguration: the trainer exited 2 (bad configuration, not retried): train.py: "
        "error: CRITBATCH_TARGET_METRIC: unknown metric")
    assert rows[(32, 0)]["restarts"] == 1  # never retried
    # A trainer without metrics is heard through its termination message.
    assert rows[(64, 0)]["source"] == "termination-message"
    assert Counter(r for _, r, _ in posted_events(k))["TrialFailed"] == 4
