"""The trial Job manifest: names, labels, ownership, security, resources, arguments."""

from __future__ import annotations

import copy

import pytest
from harness import sweep_manifest

from critbatch.spec import TrialKey, parse_sweep, trainer_args
from critbatch_operator.jobs import build_job, sweep_label_value


def job_for(key=None, **spec):
    key = key or TrialKey(8, 1)
    body = sweep_manifest("demo", **spec)
    body["metadata"].update(uid="1234-uid", generation=3)
    return parse_sweep(body), build_job(parse_sweep(body), key)


def test_name_labels_and_owner_reference():
    _, job = job_for()
    meta = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert meta["name"] == "demo-b8-s1" and meta["namespace"] == "default"
    want = {"app.kubernetes.io/managed-by": "critbatch", "critbatch.dev/sweep": "demo",
            "critbatch.dev/batch-size": "8", "critbatch.dev/seed": "1"}
    assert meta["labels"] == want
    assert want.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert meta["ownerReferences"] == [{
        "apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep", "name": "demo",
        "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}]
    assert meta["annotations"]["critbatch.dev/generation"] == "3"


def test_pod_is_locked_down():
    _, job = job_for()
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs writable scratch space for checkpoints, caches and /tmp.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    for path in ("/scratch", "/tmp", "/dev/shm"):
        assert "emptyDir" in vols[mounts[path]]


def test_trainer_runs_without_a_shell_with_the_contract_arguments():
    sweep, job = job_for()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["critbatch-trainer"]
    assert c["args"] == trainer_args(sweep, TrialKey(8, 1), metrics_port=9100,
                                     checkpoint_dir="/scratch/checkpoints",
                                     termination_log="/dev/termination-log", data_path=None)
    assert all(isinstance(a, str) for a in c["args"])
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    ann = job["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9100"


def test_gpus_resources_and_pod_overrides_come_from_the_spec():
    body = sweep_manifest("demo")
    body["spec"]["trainer"].update(gpus=2, resources={"requests": {"cpu": "4"},
                                                      "limits": {"memory": "16Gi"}},
                                   podTemplate={
                                       "nodeSelector": {"gpu": "h100"},
                                       "tolerations": [{"key": "nvidia.com/gpu",
                                                        "operator": "Exists"}],
                                       "priorityClassName": "batch",
                                       "labels": {"team": "ml"},
                                       "volumes": [{"name": "extra", "emptyDir": {}}],
                                       "volumeMounts": [{"name": "extra", "mountPath": "/x"}]},
                                   env=[{"name": "NCCL_DEBUG", "value": "WARN"}])
    job = build_job(parse_sweep(body), TrialKey(2, 0))
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"] == {"requests": {"cpu": "4"},
                              "limits": {"memory": "16Gi", "nvidia.com/gpu": 2}}
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "batch"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/x"} in c["volumeMounts"]
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in c["env"]


def test_resources_naming_the_gpu_win_over_gpus_and_zero_gpus_asks_for_none():
    body = sweep_manifest("demo")
    body["spec"]["trainer"].update(gpus=4, resources={"limits": {"nvidia.com/gpu": 1}})
    (c,) = build_job(parse_sweep(body), TrialKey(2, 0))["spec"]["template"]["spec"][
        "containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    _, job = job_for(trainer={"image": "t:1", "gpus": 0})
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {}


def test_dataset_and_inception_claims_are_mounted_read_only():
    body = sweep_manifest("lsun")
    body["spec"]["trainer"].update(dataset={"name": "lsun", "pvc": "lsun-data",
                                            "path": "bedroom"},
                                   inception={"pvc": "weights", "file": "pt_inception.pth"})
    job = build_job(parse_sweep(body), TrialKey(64, 0))
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"dataset": {"claimName": "lsun-data", "readOnly": True},
                      "inception": {"claimName": "weights", "readOnly": True}}
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    args = c["args"]
    assert args[args.index("--data-path") + 1] == "/data/bedroom"
    assert args[args.index("--extractor") + 1] == "inception:/inception/pt_inception.pth"


def test_kueue_queue_label_and_suspended_creation():
    _, job = job_for(queueName="gpu-queue")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    _, job = job_for()
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert "suspend" not in job["spec"]


def test_retries_follow_backoff_limit_but_bad_configuration_fails_at_once():
    body = sweep_manifest("demo")
    body["spec"]["trainer"]["backoffLimit"] = 5
    job = build_job(parse_sweep(body), TrialKey(2, 0))
    assert job["spec"]["backoffLimit"] == 5
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                 "values": [2]}} in rules


def test_long_sweep_names_give_valid_label_values_and_job_names():
    body = sweep_manifest("s" * 100)
    job = build_job(parse_sweep(body), TrialKey(1024, 7))
    assert len(job["metadata"]["name"]) <= 63
    value = job["metadata"]["labels"]["critbatch.dev/sweep"]
    assert len(value) <= 63 and value == sweep_label_value("s" * 100) != "s" * 63


@pytest.mark.parametrize("key", [TrialKey(2, 0), TrialKey(64, 1)])
def test_job_manifest_passes_kubernetes_schema(key):
    kv = pytest.importorskip("kubernetes_validate")
    job = copy.deepcopy(build_job(parse_sweep(sweep_manifest("demo")), key))
    job["metadata"]["ownerReferences"][0]["uid"] = "0000"
    kv.validate(job, "1.30", strict=True)
