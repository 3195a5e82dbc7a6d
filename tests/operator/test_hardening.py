"""Hostile input and failures: foreign Jobs, reconciles that raise, trainers that lie or stall.

Reconciles are driven directly (no kopf) against kmock, so each test controls the clock and
knows which reconcile did what; trainers and their endpoints are real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time

import pytest
from fakes import JOBS, NS, PODS, FakeCluster, FakeTrainer
from harness import (
    create_sweep,
    job_posts,
    operator,
    posted_events,
    status,
    wait_for,
)
from kubernetes.client.rest import ApiException
from raw_http import RawServer, trickle
from sweeps import sweep_manifest

from critbatch.science import ScienceError
from critbatch.spec import parse_sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator import opmetrics
from critbatch_operator import reconcile as reconcile_module
from critbatch_operator import world as world_module
from critbatch_operator.config import Config
from critbatch_operator.jobs import build_job
from critbatch_operator.kube import Kube, make_api_client
from critbatch_operator.reconcile import SweepState, reconcile
from critbatch_operator.world import read_world

pytestmark = pytest.mark.timeout(60)


def condition(st, type_):
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def rows(st):
    return {(t["batchSize"], t["seed"]): t for t in st.get("trials") or []}


class Driver:
    """Reconciles one sweep by hand, with a clock the test moves."""

    def __init__(self, k, body, kube=None, **cfg):
        self.k, self.body = k, body
        self.kube = kube or Kube(make_api_client(str(k.url).rstrip("/")))
        self.cfg = Config(**{"reconcile_interval": 1.0, "metrics_timeout": 1.0,
                             "max_backoff": 4.0, **cfg})
        self.state = SweepState()
        self.events: list[tuple[str, str, str]] = []
        self.now = 1000.0

    async def __call__(self, **kw):
        current = {**self.body, "status": status(self.k, self.body["metadata"]["name"])}
        return await reconcile(current, kube=self.kube, cfg=self.cfg, state=self.state,
                               emit=lambda *e: self.events.append(e), clock=lambda: self.now,
                               **kw)

    def reasons(self):
        return [r for _, r, _ in self.events]


# ---------------------------------------------------------------------------------------------
# Ownership: a Job with a trial's name that the sweep does not own
# ---------------------------------------------------------------------------------------------


def foreign_job(sweep, key, kind):
    job = build_job(sweep, key)
    job["metadata"]["uid"] = "uid-foreign-job"
    if kind.endswith("no owner"):
        del job["metadata"]["ownerReferences"]
    else:
        job["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-sweep"
    if kind.startswith("unlabelled"):
        job["metadata"]["labels"], job["metadata"]["annotations"] = {}, {}
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    return job


def result_pod(job, key, steps):
    """A finished pod of `job` whose termination message is a result for trial `key`."""
    tpl = job["spec"]["template"]["metadata"]
    result = {"sweep": "demo", "batch_size": key.batch_size, "seed": key.seed, "reached": True,
              "steps": steps, "fid": 40.0}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": job["metadata"]["name"] + "-x", "namespace": NS, "labels": tpl["labels"],
        "annotations": tpl["annotations"], "creationTimestamp": "2026-01-01T00:00:00Z",
        "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"],
                             "uid": job["metadata"]["uid"], "controller": True}]},
        "spec": job["spec"]["template"]["spec"],
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {
            "terminated": {"exitCode": 0, "reason": "Completed",
                           "message": json.dumps(result)}}}]}}


@pytest.mark.parametrize("kind", ["labelled, no owner", "labelled, another uid",
                                  "unlabelled, another uid"])
async def test_a_foreign_job_with_a_trials_name_is_never_adopted(k, kind):
    body = await create_sweep(k, sweep_manifest("demo", batchSizes=[4, 8], seeds=1,
                                                parallelism=2, pruning={"sfoBound": False}))
    sweep = parse_sweep(body)
    key = TrialKey(4, 0)
    foreign = foreign_job(sweep, key, kind)
    k.objects[JOBS, NS, "demo-b4-s0"] = foreign
    k.objects[PODS, NS, "demo-b4-s0-x"] = result_pod(foreign, key, 100)
    run = Driver(k, body)

    for _ in range(3):
        outcome = await run()
    st = status(k, "demo")
    assert outcome.created == [] and rows(st)[(4, 0)]["phase"] == "Pending"  # not Reached
    assert rows(st)[(8, 0)]["phase"] == "Pending" and st["trialsDone"] == 0
    degraded = condition(st, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "JobNameTaken")
    assert "Job demo-b4-s0 exists and is not this sweep's" in degraded["message"]
    taken = [m for _, r, m in run.events if r == "JobNameTaken"]
    assert len(taken) == 1 and "demo-b4-s0" in taken[0]  # one Event, not one per reconcile
    assert k.objects[JOBS, NS, "demo-b4-s0"].raw["metadata"].get("ownerReferences") == \
        foreign["metadata"].get("ownerReferences")  # left alone
    assert not k.objects[JOBS, NS, "demo-b4-s0"].deleted

    # Once its owner deletes it, the sweep makes its own and the condition clears.
    del k.objects[JOBS, NS, "demo-b4-s0"]
    outcome = await run()
    assert outcome.created == ["demo-b4-s0"]
    mine = k.objects[JOBS, NS, "demo-b4-s0"].raw
    assert mine["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    await run()
    assert condition(status(k, "demo"), "Degraded").get("reason") != "JobNameTaken"
    assert rows(status(k, "demo"))[(4, 0)]["phase"] == "Pending"  # the old pod is not its


async def test_a_foreign_job_with_a_finished_trials_name_blocks_nothing(k):
    manifest = sweep_manifest("fin", batchSizes=[4], seeds=1)
    manifest["status"] = {"trials": [{"batchSize": 4, "seed": 0, "job": "fin-b4-s0",
                                      "phase": "Reached", "steps": 620, "source": "direct"}]}
    body = await create_sweep(k, manifest)
    k.objects[JOBS, NS, "fin-b4-s0"] = foreign_job(parse_sweep(body), TrialKey(4, 0),
                                                   "labelled, another uid")
    run = Driver(k, body)
    for _ in range(3):
        await run()
    st = status(k, "fin")
    assert rows(st)[(4, 0)]["phase"] == "Reached" and st["phase"] == "Succeeded"
    assert condition(st, "Degraded")["status"] == "False" and "JobNameTaken" not in run.reasons()


@pytest.mark.parametrize("listed", ["4:x", "4:0,4:0", ",".join(f"{b}:0" for b in range(1, 10)),
                                    "4:0," * 50_000 + "4:0"],
                         ids=["malformed", "twice", "nine pairs", "oversized"])
async def test_a_job_with_an_unreadable_trials_annotation_does_not_break_a_reconcile(k, listed):
    body = await create_sweep(k, sweep_manifest("demo", batchSizes=[4, 8], seeds=1,
                                                parallelism=2, pruning={"sfoBound": False}))
    job = build_job(parse_sweep(body), TrialKey(4, 0))
    job["metadata"]["uid"] = "uid-own-job"
    job["metadata"]["annotations"]["critbatch.dev/trials"] = listed
    k.objects[JOBS, NS, "demo-b4-s0"] = job
    run = Driver(k, body)
    for _ in range(2):
        outcome = await run()
        assert outcome.error is None
    st = status(k, "demo")
    assert condition(st, "Degraded")["status"] == "False"
    # Not read as the trial's Job, which then is the sweep's own on a 409: nothing is taken.
    assert rows(st)[(4, 0)]["phase"] == "Pending" and "ReconcileError" not in run.reasons()


async def test_a_409_on_the_sweeps_own_job_is_success(k):
    body = await create_sweep(k, sweep_manifest("own", batchSizes=[4], seeds=1))
    sweep = parse_sweep(body)
    kube = Kube(make_api_client(str(k.url).rstrip("/")))
    job = build_job(sweep, TrialKey(4, 0))
    assert await asyncio.to_thread(kube.create_job, NS, copy.deepcopy(job)) is True
    assert await asyncio.to_thread(kube.create_job, NS, copy.deepcopy(job)) is False


# ---------------------------------------------------------------------------------------------
# A reconcile that raises: Degraded, an Event, a backoff, a retry
# ---------------------------------------------------------------------------------------------


async def test_a_reconcile_whose_planner_raises_is_degraded_backs_off_and_retries(
        k, monkeypatch):
    body = await create_sweep(k, sweep_manifest("boom", batchSizes=[4, 8], seeds=1))
    run = Driver(k, body)
    real_plan = reconcile_module.plan
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ScienceError("steps: must be a finite number >= 0, got inf")

    monkeypatch.setattr(reconcile_module, "plan", broken)
    errors = opmetrics.REGISTRY.get_sample_value(
        "critbatch_operator_reconcile_errors_total", {"reason": "ScienceError"}) or 0

    outcome = await run()
    assert outcome.error == "ScienceError: steps: must be a finite number >= 0, got inf"
    degraded = condition(status(k, "boom"), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ReconcileError")
    assert degraded["message"] == f"reconcile failed ({outcome.error}); retrying in 1s"
    assert run.reasons() == ["ReconcileError"]
    assert opmetrics.REGISTRY.get_sample_value(
        "critbatch_operator_reconcile_errors_total", {"reason": "ScienceError"}) == errors + 1

    # The timer's ticks wait out the backoff: 1 s, then 2 s, then 4 s (the maximum).
    assert (await run()).skipped and len(calls) == 1
    run.now += 1
    await run()
    assert len(calls) == 2 and "retrying in 2s" in condition(status(k, "boom"),
                                                             "Degraded")["message"]
    run.now += 1
    assert (await run()).skipped
    # A spec change (a forced reconcile) does not wait.
    await run(force=True)
    assert len(calls) == 3 and "retrying in 4s" in condition(status(k, "boom"),
                                                             "Degraded")["message"]
    assert run.reasons() == ["ReconcileError"]  # one Event while the reason stays

    monkeypatch.setattr(reconcile_module, "plan", real_plan)
    run.now += 4
    outcome = await run()
    assert outcome.error is None and sorted(outcome.created) == ["boom-b4-s0", "boom-b8-s0"]
    assert condition(status(k, "boom"), "Degraded")["status"] == "False"


async def test_through_kopf_a_raising_planner_is_a_condition_an_event_and_a_retry(
        k, monkeypatch):
    real_plan, calls = reconcile_module.plan, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("boom")
        return real_plan(*args, **kwargs)

    def degraded_written() -> bool:
        """A status patch said Degraded=ReconcileError (the retry may clear it at once, so the
        patches are read rather than the status at one moment)."""
        return any(c.get("type") == "Degraded" and c.get("reason") == "ReconcileError"
                   for req in list(k) if req.subresource == "status" and isinstance(req.data, dict)
                   for c in (req.data.get("status") or {}).get("conditions") or [])

    monkeypatch.setattr(reconcile_module, "plan", flaky)
    body = sweep_manifest("kopf", batchSizes=[4], seeds=1)
    async with operator(k, reconcile_interval=0.1, max_backoff=0.4):
        await create_sweep(k, body)
        await wait_for(degraded_written, what="Degraded=ReconcileError")
        await wait_for(lambda: "kopf-b4-s0" in job_posts(k), what="the retry to create a Job")
    assert ("Warning", "ReconcileError", "reconcile failed (RuntimeError: boom); retrying with "
            "backoff") in posted_events(k)
    assert condition(status(k, "kopf"), "Degraded")["status"] == "False"


class FailingKube(Kube):
    """Lists fail with what an API server might answer, body and all."""

    def list_jobs(self, namespace, selector):
        exc = ApiException(status=500, reason="Internal Server Error")
        exc.body = "SECRET etcd detail"
        raise exc


async def test_a_failed_read_is_degraded_without_the_servers_answer(k):
    body = await create_sweep(k, sweep_manifest("flaky", batchSizes=[4], seeds=1))
    run = Driver(k, body, kube=FailingKube(make_api_client(str(k.url).rstrip("/"))))
    outcome = await run()
    assert outcome.error == "Kubernetes API error 500 Internal Server Error"
    degraded = condition(status(k, "flaky"), "Degraded")
    assert degraded["reason"] == "ReconcileError" and "SECRET" not in degraded["message"]


async def test_a_failed_status_write_is_logged_and_still_backs_off(k, monkeypatch):
    body = await create_sweep(k, sweep_manifest("nowrite", batchSizes=[4], seeds=1))

    class NoWrites(FailingKube):
        def patch_status(self, namespace, name, status):
            raise OSError("connection reset")

    run = Driver(k, body, kube=NoWrites(make_api_client(str(k.url).rstrip("/"))))
    outcome = await run()
    assert outcome.error and not outcome.patched and run.events == []
    assert (await run()).skipped


# ---------------------------------------------------------------------------------------------
# Trainers that lie: an infinite step in the metrics and in the termination message
# ---------------------------------------------------------------------------------------------


async def test_a_trainer_reporting_infinite_steps_fails_its_trial_and_the_sweep_goes_on(
        k, monkeypatch):
    values, result = FakeTrainer.values, FakeTrainer.result

    def lying_values(self):
        out = values(self)
        if self.batch_size == 8:
            out["step"] = math.inf
        return out

    def lying_result(self):
        out = result(self)
        if self.batch_size == 8:
            out["steps"] = math.inf  # json.dumps writes Infinity
        return out

    monkeypatch.setattr(FakeTrainer, "values", lying_values)
    monkeypatch.setattr(FakeTrainer, "result", lying_result)
    body = await create_sweep(k, sweep_manifest("liar", batchSizes=[4, 8, 16], seeds=1,
                                                parallelism=3, pruning={"sfoBound": False}))
    run = Driver(k, body, reconcile_interval=0.1, metrics_timeout=1.0)
    seen = set()
    async with FakeCluster(k):
        for _ in range(300):
            outcome = await run()
            assert outcome.error is None
            seen.add(condition(outcome.status, "Degraded").get("reason"))
            if outcome.status["phase"] in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(0.03)
    st = status(k, "liar")
    assert st["phase"] in ("Succeeded", "Failed") and st["trialsDone"] == 3
    row = rows(st)[(8, 0)]
    assert row["phase"] == "Failed"
    assert row["reason"] == ("MetricsInvalid: termination message: steps: must be a finite "
                             "number >= 0, got Infinity")
    assert {rows(st)[(4, 0)]["phase"], rows(st)[(16, 0)]["phase"]} == {"Reached"}
    assert "MetricsInvalid" in seen  # while it ran: its metrics were refused, with a reason


# ---------------------------------------------------------------------------------------------
# Slow pods: the direct scrapes of one reconcile share a deadline
# ---------------------------------------------------------------------------------------------


class ListKube:
    """Answers the two lists from memory."""

    def __init__(self, jobs, pods):
        self.jobs, self.pods = jobs, pods

    def list_jobs(self, namespace, selector):
        return self.jobs

    def list_pods(self, namespace, selector):
        return self.pods


def test_trickling_pods_cannot_hold_a_reconcile_past_the_shared_deadline(monkeypatch):
    monkeypatch.setattr(world_module, "SCRAPE_WORKERS", 1)  # one at a time: the worst case
    manifest = sweep_manifest("slow", batchSizes=[2, 4, 8, 16], seeds=1,
                              metrics={"source": "direct"})
    manifest["metadata"]["uid"] = "uid-slow"
    sweep = parse_sweep(manifest)
    servers = [RawServer(trickle(b"#" * 100_000)) for _ in range(4)]
    try:
        jobs, pods = [], []
        for key, server in zip(sweep.trials(), servers, strict=True):
            job = build_job(sweep, key, metrics_port=server.port)
            job["metadata"]["uid"] = f"uid-{key.batch_size}"
            pod = result_pod(job, key, 1)
            pod["status"] = {"phase": "Running", "podIP": "127.0.0.1"}
            jobs.append(job)
            pods.append(pod)
        t0 = time.monotonic()
        world = read_world(ListKube(jobs, pods), sweep, prometheus_url=None, timeout=0.25)
        elapsed = time.monotonic() - t0
    finally:
        for s in servers:
            s.close()
    # Four pods at 0.25 s each would be 1 s; the shared deadline is 2 x 0.25 s.
    assert elapsed < 0.85, elapsed
    assert world.source == "direct" and world.metrics == {} and len(world.jobs) == 4
