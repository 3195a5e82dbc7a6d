"""Data-parallel trials in the operator: a trial on several GPUs runs PyTorch's launcher in its
one pod; a trial on several nodes is an Indexed Job of one pod per node plus a headless Service
in which node 0 is found, and it still reads as one trial (its result is rank 0's).

The manifests are checked as pure functions; the sweeps run the real operator (kopf) against
kmock, with `IndexedCluster` playing the Job controller for Indexed Jobs.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import uuid
from collections import Counter
from typing import Any

import kmock as kmock_lib
import pytest
from fakes import JOBS, NS, PODS, Behaviour, FakeCluster, FakeTrainer, model_steps
from harness import (
    OPERATOR_RBAC,
    api_calls,
    create_sweep,
    job_posts,
    operator,
    phase_is,
    status,
    wait_for,
)
from pod_security import restricted_violations
from sweeps import sweep_manifest

from critbatch.launch import RENDEZVOUS_PORT, Rendezvous, launch_command
from critbatch.spec import SpecError, parse_sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.config import Config
from critbatch_operator.indexed import INDEX_KEY, JOB_NAME_LABEL
from critbatch_operator.jobs import admit, build_job, build_service
from critbatch_operator.observations import observe
from critbatch_operator.world import group_objects

pytestmark = pytest.mark.timeout(120)

SERVICES = kmock_lib.resource("", "v1", "services")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
TRIAL_LABELS = {"app.kubernetes.io/managed-by", "critbatch.dev/sweep", "critbatch.dev/batch-size",
                "critbatch.dev/seed"}


def sweep_of(name: str = "demo", *, trainer: dict[str, Any], uid: str = "1234-uid",
             **spec: Any):
    body = sweep_manifest(name, trainer=trainer, **spec)
    body["metadata"].update(uid=uid, generation=1)
    return admit(parse_sweep(body), Config())


def container_of(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def trainer_part(c: dict) -> list[str]:
    """The trainer's command line inside the launcher's."""
    line = [*c["command"], *c.get("args", [])]
    return line[line.index("--no-python") + 1:] if "--no-python" in line else line


# ---------------------------------------------------------------------------------------------
# The manifests
# ---------------------------------------------------------------------------------------------


def test_a_trial_on_four_gpus_runs_the_launcher_in_its_one_pod():
    sweep = sweep_of(trainer={"gpus": 4, "resources": {"limits": {"cpu": "16"}}},
                     batchSizes=[8, 16])
    job = build_job(sweep, TrialKey(8, 0))
    c = container_of(job)
    plain = build_job(sweep_of(trainer={"gpus": 1, "resources": {"limits": {"cpu": "16"}}},
                               batchSizes=[8, 16]), TrialKey(8, 0))
    # The built-in trainer with its usual flags, started as four workers by the launcher.
    assert trainer_part(c) == [*container_of(plain)["command"], *container_of(plain)["args"]]
    assert [*c["command"], *c["args"]] == launch_command(trainer_part(c), python="python",
                                                         processes=4)
    assert c["command"] == ["python"] and "--standalone" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # One pod, as before.
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (1, 1)
    assert "completionMode" not in job["spec"]
    assert "subdomain" not in job["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["CRITBATCH_THREADS"] == "16"  # the pod's: the trainer divides it among workers
    assert restricted_violations(job["spec"]["template"]) == []


def test_a_trial_on_two_nodes_is_an_indexed_job_whose_pods_find_node_0_by_name():
    sweep = sweep_of(trainer={"nodes": 2, "gpus": 2}, batchSizes=[8, 16], queueName="gpus")
    job = build_job(sweep, TrialKey(8, 1))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert job["metadata"]["name"] == "demo-b8-s1"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    # Pod i is host demo-b8-s1-i in the Service's domain; node 0's launcher is the meeting point.
    assert pod["subdomain"] == "demo-b8-s1"
    c = container_of(job)
    assert [*c["command"], *c["args"]] == launch_command(
        trainer_part(c), python="python", processes=2, nodes=2,
        rendezvous=Rendezvous("demo-b8-s1-0.demo-b8-s1", "$(JOB_COMPLETION_INDEX)"))
    for flag in ("--nnodes=2", "--node-rank=$(JOB_COMPLETION_INDEX)",
                 "--master-addr=demo-b8-s1-0.demo-b8-s1", f"--master-port={RENDEZVOUS_PORT}"):
        assert flag in c["args"]
    assert {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"} in c[
        "ports"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"  # per pod
    # Everything else of the trial pod stays: labels, annotations, owner, lockdown, queue.
    one_node = build_job(sweep_of(trainer={"gpus": 2}, batchSizes=[8, 16], queueName="gpus"),
                         TrialKey(8, 1))
    assert job["metadata"] == one_node["metadata"]
    assert job["spec"]["template"]["metadata"] == one_node["spec"]["template"]["metadata"]
    assert c["securityContext"] == container_of(one_node)["securityContext"]
    assert pod["securityContext"] == one_node["spec"]["template"]["spec"]["securityContext"]
    assert spec["podFailurePolicy"] == one_node["spec"]["podFailurePolicy"]
    assert spec["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    assert restricted_violations(job["spec"]["template"]) == []


def test_the_headless_service_selects_the_jobs_pods_and_carries_the_trials_labels_and_owner():
    sweep = sweep_of(trainer={"nodes": 2}, batchSizes=[8, 16], queueName="gpus")
    job = build_job(sweep, TrialKey(8, 1))
    svc = build_service(sweep, TrialKey(8, 1))
    assert (svc["apiVersion"], svc["kind"]) == ("v1", "Service")
    meta = svc["metadata"]
    assert meta["name"] == job["spec"]["template"]["spec"]["subdomain"] == "demo-b8-s1"
    assert meta["namespace"] == job["metadata"]["namespace"]
    assert meta["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert meta["labels"] == {k: v for k, v in job["metadata"]["labels"].items()
                              if k in TRIAL_LABELS}
    assert "kueue.x-k8s.io/queue-name" not in meta["labels"]  # Kueue admits the Job alone
    assert svc["spec"] == {
        "clusterIP": "None", "publishNotReadyAddresses": True,
        # The label the Job controller puts on every pod of the Job.
        "selector": {JOB_NAME_LABEL: "demo-b8-s1"},
        "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                   "protocol": "TCP"}]}


def test_manifests_pass_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate")
    sweep = sweep_of(trainer={"nodes": 4, "gpus": 8}, batchSizes=[32, 64])
    for obj in (build_job(sweep, TrialKey(32, 0)), build_service(sweep, TrialKey(32, 0))):
        kv.validate(copy.deepcopy(obj), "1.30", strict=True)


def test_a_sweep_name_starting_with_a_digit_gets_a_service_name_that_is_a_dns_1035_label():
    sweep = sweep_of("7up", trainer={"nodes": 2})
    job = build_job(sweep, TrialKey(8, 1))
    svc = build_service(sweep, TrialKey(8, 1))
    assert job["metadata"]["name"] == "7up-b8-s1"
    assert svc["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"] == "t7up-b8-s1-r"
    assert DNS_1035.match(svc["metadata"]["name"])
    assert "--master-addr=7up-b8-s1-0.t7up-b8-s1-r" in container_of(job)["args"]


@pytest.mark.parametrize(("name", "ok"), [
    ("s" * 54, True),          # s...s-b64-s1 has 61 characters, its pods' hosts 63
    ("s" * 55, False),         # 62: pod s...s-b64-s1-1 would have 64
    ("s" * 200, False),        # cut and hashed to 63
    ("1" + "s" * 52, True),    # 60: Service t1s...s-b64-s1-r has 63
    ("1" + "s" * 53, False),   # 61 fits the pods' hosts, but not the Service's name
])
def test_sweep_names_too_long_for_pod_host_names_are_refused_naming_the_field(name, ok):
    body = sweep_manifest(name, trainer={"nodes": 2}, batchSizes=[8, 64])
    sweep = parse_sweep(body)
    if ok:
        admit(sweep, Config())
        return
    with pytest.raises(SpecError, match=r"^metadata\.name: too long for trials on 2 nodes"):
        admit(sweep, Config())
    admit(parse_sweep(sweep_manifest(name, batchSizes=[8, 64])), Config())  # one node: any name


def test_only_rank_0_speaks_for_a_trial_on_several_nodes():
    """Rank 1 exits 0 without a result; the trial's result is rank 0's termination message."""
    sweep = sweep_of(trainer={"nodes": 2}, batchSizes=[8, 16])
    job = build_job(sweep, TrialKey(8, 0))
    job["metadata"]["uid"] = "job-uid"
    job["status"] = {"active": 1, "succeeded": 1}  # rank 1 is done, rank 0 is finishing

    def pod(index: int, terminated: dict | None) -> dict:
        p = copy.deepcopy(job["spec"]["template"])
        p["metadata"].update(name=f"demo-b8-s0-{index}-x", ownerReferences=[
            {"kind": "Job", "name": "demo-b8-s0", "uid": "job-uid"}])
        p["metadata"]["annotations"][INDEX_KEY] = str(index)
        state = {"terminated": terminated} if terminated else {"running": {}}
        p["status"] = {"phase": "Succeeded" if terminated else "Running",
                       "podIP": f"10.0.0.{index}",
                       "containerStatuses": [{"name": "trainer", "state": state}]}
        return p

    rank1 = pod(1, {"exitCode": 0, "reason": "Completed"})
    world = group_objects(sweep, [job], [pod(0, None), rank1])
    assert [p["metadata"]["name"] for p in world.pods[TrialKey(8, 0)]] == ["demo-b8-s0-0-x"]
    obs, _ = observe(sweep, world)
    assert obs[TrialKey(8, 0)].phase.value == "Running"  # not ResultMissing, not finished
    trainer = FakeTrainer("demo", 8, 0, n=700, max_steps=4000)
    trainer.advance(700)
    rank0 = pod(0, {"exitCode": 0, "reason": "Completed",
                    "message": json.dumps(trainer.result())})
    job["status"] = {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}
    obs, _ = observe(sweep, group_objects(sweep, [job], [rank1, rank0]))
    assert (obs[TrialKey(8, 0)].phase.value, obs[TrialKey(8, 0)].steps) == ("Reached", 700)


# ---------------------------------------------------------------------------------------------
# Sweeps against kmock
# ---------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class IndexedCluster(FakeCluster):
    """The fake cluster, with the Job controller's Indexed Jobs: index 0 is the fake trainer's
    pod; indexes 1.. run beside it (Running, newer, nothing on their metrics port) and exit 0
    without a termination message when the trainers finish, before rank 0 has written its
    result. Every pod gets the index annotation and host name `<job>-<index>`."""

    def __init__(self, k: Any, behaviour: Behaviour | None = None) -> None:
        super().__init__(k, behaviour)
        self.others: dict[str, list[tuple]] = {}  # Job name -> its pods of index > 0
        self.others_done: set[str] = set()

    def tick(self) -> None:
        jobs = self.jobs()
        for name in [n for n in self.others if n not in jobs]:
            for key in self.others.pop(name):
                self.k.objects[key].delete()
        super().tick()

    def _start(self, name: str, job: dict, now: float) -> None:
        super()._start(name, job, now)
        spec = job["spec"]
        if spec.get("completionMode") != "Indexed" or name not in self.pods:
            return
        rank0 = self.k.objects[PODS, NS, self._pod_name(name)]
        rank0.patch({"metadata": {"annotations": {INDEX_KEY: "0"}},
                     "spec": {"hostname": f"{name}-0"}})
        self.others[name] = []
        for i in range(1, spec["completions"]):
            pod = copy.deepcopy(rank0.raw)
            pod["metadata"].update(name=f"{name}-{i}-{uuid.uuid4().hex[:5]}",
                                   uid=str(uuid.uuid4()))
            pod["metadata"]["annotations"][INDEX_KEY] = str(i)
            pod["spec"]["hostname"] = f"{name}-{i}"
            pod["spec"]["containers"][0]["ports"] = [{"name": "metrics",
                                                      "containerPort": _closed_port()}]
            key = (PODS, NS, pod["metadata"]["name"])
            self.k.objects[key] = pod
            self.others[name].append(key)

    def _progress(self, name: str, job: dict, now: float) -> None:
        others = self.others.get(name) or []
        if others and self.pods[name].finished and name not in self.others_done:
            self.others_done.add(name)
            for key in others:
                self.k.objects[key].patch({
                    "status": {"phase": "Succeeded", "containerStatuses": [
                        {"name": "trainer", "ready": False, "restartCount": 0,
                         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}})
            self.k.objects[JOBS, NS, name].patch({"status": {"succeeded": len(others)}})
        super()._progress(name, job, now)
        if others and name not in self.pods:  # rank 0 ended: the Job is complete
            self.k.objects[JOBS, NS, name].patch({"status": {"succeeded": len(others) + 1}})


def service_requests(k: Any, method: str) -> list[str]:
    """Names in the operator's POSTs (method "POST") or DELETEs of Services."""
    out = []
    for req in list(k):
        verb = str(getattr(req.method, "value", req.method)).upper()
        if req.resource == SERVICES and verb == method:
            out.append(req.name or (req.data or {}).get("metadata", {}).get("name"))
    return out


def live_services(k: Any) -> dict[str, dict]:
    return {name: obj.raw for (res, _ns, name), obj in list(k.objects.items())
            if res == SERVICES and not obj.deleted}


async def test_a_sweep_on_two_nodes_runs_as_indexed_jobs_with_services_across_a_restart(k):
    body = sweep_manifest("spread", batchSizes=[2, 4, 8, 16, 32, 64], seeds=1, parallelism=4,
                          trainer={"nodes": 2})
    # Paced by samples as in the harness's full sweep: b = 2 and 4 reach first, and the SFO
    # bound stops some larger batch while it runs.
    pace = Behaviour(samples_per_second=4000.0, steps_per_second_at={2: 40_000.0, 4: 4000.0})
    async with IndexedCluster(k, pace) as cluster:
        async with operator(k):
            created = await create_sweep(k, body)
            await wait_for(lambda: status(k, "spread").get("trialsDone", 0) >= 2,
                           what="two trials done")
        posts_before_restart = len(job_posts(k))
        async with operator(k):
            await wait_for(phase_is(k, "spread", "Succeeded", "Failed"), timeout=60,
                           what="the sweep to finish")
        jobs, services = cluster.jobs(), live_services(k)
    st = status(k, "spread")
    assert st["phase"] == "Succeeded", st
    rows = {(t["batchSize"], t["seed"]): t for t in st["trials"]}
    assert len(rows) == 6  # one row per trial, whatever its pods
    reached = [r for r in rows.values() if r["phase"] == "Reached"]
    # Results are rank 0's: its metrics (rank 1 serves none) or its termination message; a
    # rank 1 that exited 0 without a result did not fail a trial.
    assert reached and all(r["steps"] == model_steps(b, s) for (b, s), r in rows.items()
                           if r["phase"] == "Reached")
    assert {r["phase"] for r in rows.values()} <= {"Reached", "Pruned"}
    assert any(r["source"] == "direct" for r in reached)
    pruned = [r for r in rows.values() if r["phase"] == "Pruned"]
    assert pruned

    # Each trial's Service and Job were POSTed once, Service first, across the restart too.
    job_names, svc_names = job_posts(k), service_requests(k, "POST")
    assert posts_before_restart >= 1
    assert [n for n, c in Counter(job_names).items() if c > 1] == []
    assert Counter(svc_names) == Counter(job_names)
    # Pruning deleted both; the finished trials keep theirs (the sweep's deletion takes them).
    deleted = service_requests(k, "DELETE")
    assert deleted and set(deleted) == {n for n in job_names if n not in jobs}
    assert set(services) == set(jobs)

    uid = created["metadata"]["uid"]
    for name, job in jobs.items():
        svc = services[name]
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
        pod = job["spec"]["template"]["spec"]
        assert pod["subdomain"] == svc["metadata"]["name"] == name
        args = container_of(job)["args"]
        assert {"--nnodes=2", "--node-rank=$(JOB_COMPLETION_INDEX)",
                f"--master-addr={name}-0.{name}"} <= set(args)
        assert restricted_violations(job["spec"]["template"]) == []
        for obj in (job, svc):
            (ref,) = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                "CriticalBatchSweep", "spread", uid, True)
        assert svc["metadata"]["labels"] == {
            k_: v for k_, v in job["metadata"]["labels"].items() if k_ in TRIAL_LABELS}
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    # The pods of index 0 are where --master-addr points: their host name in the Service.
    rank0 = [obj.raw for (res, _ns, _name), obj in list(k.objects.items())
             if res == PODS and not obj.deleted
             and obj.raw["metadata"]["annotations"].get(INDEX_KEY) == "0"]
    assert rank0
    for pod in rank0:
        job, spec = pod["metadata"]["ownerReferences"][0]["name"], pod["spec"]
        assert spec["hostname"] == f"{job}-0"
        assert f"--master-addr={spec['hostname']}.{spec['subdomain']}" in spec["containers"][0][
            "args"]

    calls = api_calls(k)
    assert set(calls) <= OPERATOR_RBAC, set(calls) - OPERATOR_RBAC
    assert {("create", "", "services"), ("delete", "", "services")} <= set(calls)


async def test_a_sweep_on_four_gpus_runs_the_launcher_in_plain_jobs_and_touches_no_service(k):
    body = sweep_manifest("wide", batchSizes=[4, 8], seeds=1, parallelism=2,
                          pruning={"sfoBound": False}, trainer={"gpus": 4})
    async with FakeCluster(k) as cluster:
        async with operator(k):
            await create_sweep(k, body)
            await wait_for(phase_is(k, "wide", "Succeeded", "Failed"), what="the sweep to finish")
        jobs = cluster.jobs()
    st = status(k, "wide")
    assert st["phase"] == "Succeeded" and {t["phase"] for t in st["trials"]} == {"Reached"}
    assert len(jobs) == 2
    for job in jobs.values():
        c = container_of(job)
        assert c["command"] == ["python"]
        assert {"--standalone", "--nnodes=1", "--nproc-per-node=4"} <= set(c["args"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert job["spec"]["completions"] == 1 and "completionMode" not in job["spec"]
    calls = api_calls(k)
    assert not [c for c in calls if c[2] == "services"]
    assert set(calls) <= OPERATOR_RBAC
