"""The trial Job manifest: names, labels, ownership, security, resources, arguments, and the
trial protocol's variables of the built-in trainer and of a custom one."""

from __future__ import annotations

import copy

import pytest
from fakes import custom_manifest
from pod_security import restricted_violations
from sweeps import sweep_manifest

from critbatch import protocol
from critbatch.protocol import TrialSettings
from critbatch.spec import JOB_MOUNT_PATHS, JOB_VOLUMES, parse_sweep
from critbatch.trainer_args import trainer_args
from critbatch.vocabulary import Goal, TrialKey
from critbatch_operator.config import Config
from critbatch_operator.jobs import admit, build_job, sweep_label_value


def job_for(key=None, **spec):
    """The sweep "demo" with these spec fields, and the Job of trial `key` (b8-s1 if None)."""
    return job_of(sweep_manifest("demo", **spec), key)


def job_of(body, key=None):
    """The sweep `body` as the API server stored it, and the Job of trial `key`."""
    key = key or TrialKey(8, 1)
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


def test_a_pods_trials_share_one_job_named_and_labelled_after_the_first():
    body = sweep_manifest("demo", trialsPerGPU=2, trainer={"gpus": 1})
    job = build_job(parse_sweep(body), (TrialKey(8, 0), TrialKey(16, 0)))
    meta, tpl = job["metadata"], job["spec"]["template"]
    assert meta["name"] == "demo-b8-s0"
    assert (meta["labels"]["critbatch.dev/batch-size"], meta["labels"]["critbatch.dev/seed"]) == (
        "8", "0")
    assert meta["annotations"]["critbatch.dev/trials"] == "8:0,16:0"
    assert tpl["metadata"]["annotations"]["critbatch.dev/trials"] == "8:0,16:0"
    args = tpl["spec"]["containers"][0]["args"]
    assert args[args.index("--trials") + 1] == "8:0,16:0" and "--batch-size" not in args
    # One pod, one GPU, whatever the number of trials in it.
    assert tpl["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(("resources", "env", "threads"), [
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}, [], "4"),
    ({"requests": {"cpu": "2500m"}}, [], "2"),
    ({"requests": {"cpu": 3}}, [], "3"),
    ({"requests": {"cpu": "100m"}}, [], "1"),
    ({"requests": {"memory": "1Gi"}}, [], None),
    ({"limits": {"cpu": "4"}}, [{"name": "OMP_NUM_THREADS", "value": "2"}], None),
])
def test_trainer_threads_follow_the_cpu_it_gets(resources, env, threads):
    _, job = job_for(trainer={"resources": resources, "env": env})
    got = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert got.get("CRITBATCH_THREADS") == threads


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
    body = sweep_manifest("demo", trainer={
        "gpus": 2, "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "16Gi"}},
        "podTemplate": {
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "priorityClassName": "batch",
            "labels": {"team": "ml"},
            "volumes": [{"name": "extra", "emptyDir": {}}],
            "volumeMounts": [{"name": "extra", "mountPath": "/x"}]},
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}]})
    job = build_job(parse_sweep(body), TrialKey(2, 0))
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"] == {"requests": {"cpu": "4"},
                              "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "batch"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/x"} in c["volumeMounts"]
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in c["env"]


def test_resources_naming_the_gpu_win_over_gpus_and_zero_gpus_asks_for_none():
    body = sweep_manifest("demo", trainer={"gpus": 1,
                                           "resources": {"limits": {"nvidia.com/gpu": 2}}})
    (c,) = build_job(parse_sweep(body), TrialKey(2, 0))["spec"]["template"]["spec"][
        "containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    body = sweep_manifest("demo")
    body["spec"]["trainer"] = {"image": "t:1", "gpus": 0}
    _, job = job_of(body)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {}


def test_dataset_and_inception_claims_are_mounted_read_only():
    body = sweep_manifest("lsun", trainer={
        "dataset": {"name": "lsun", "pvc": "lsun-data", "path": "bedroom"},
        "inception": {"pvc": "weights", "file": "pt_inception.pth"}})
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


def _checkpoint_mounts(job):
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    flags = {f: args[args.index(f) + 1] for f in ("--checkpoint-dir", "--checkpoint-every")
             if f in args}
    return pod, c, flags


def test_persistent_checkpoints_give_each_trial_its_own_directory_on_the_claim():
    sweep = parse_sweep(sweep_manifest("demo", trainer={"checkpoints": {"pvc": "ckpt"}}))
    dirs = set()
    for key in (TrialKey(8, 0), TrialKey(8, 1), TrialKey(16, 0)):
        job = build_job(sweep, key)
        pod, c, flags = _checkpoint_mounts(job)
        (vol,) = [v for v in pod["volumes"] if v["name"] == "checkpoints"]
        assert vol == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}
        mount, cache = [m for m in c["volumeMounts"] if m["name"] == "checkpoints"]
        # Read-write, and a retry of the Job (same name) mounts the same directory again.
        assert mount == {"name": "checkpoints", "mountPath": flags["--checkpoint-dir"],
                         "subPath": job["metadata"]["name"]}
        # The caches (FID statistics, decoded datasets) are the claim's, shared by every Job.
        env = {e["name"]: e["value"] for e in c["env"]}
        assert cache == {"name": "checkpoints", "mountPath": env["XDG_CACHE_HOME"],
                         "subPath": ".cache"}
        assert not mount["mountPath"].startswith("/scratch")  # not inside a pod-local emptyDir
        dirs.add(mount["subPath"])
    assert dirs == {"demo-b8-s0", "demo-b8-s1", "demo-b16-s0"}


def test_persistent_checkpoints_are_written_at_every_evaluation_unless_a_period_is_set():
    # evalEvery: 10, no checkpointEvery
    body = sweep_manifest("demo", trainer={"checkpoints": {"pvc": "ckpt"}})
    _, _, flags = _checkpoint_mounts(build_job(parse_sweep(body), TrialKey(8, 0)))
    assert flags["--checkpoint-every"] == "10"
    body["spec"]["trainer"]["checkpointEvery"] = 250
    _, c, flags = _checkpoint_mounts(build_job(parse_sweep(body), TrialKey(8, 0)))
    assert flags["--checkpoint-every"] == "250"
    assert c["args"].count("--checkpoint-every") == 1


def test_without_a_claim_checkpoints_stay_on_the_pods_scratch_space():
    _, job = job_for()
    pod, c, flags = _checkpoint_mounts(job)
    assert flags == {"--checkpoint-dir": "/scratch/checkpoints"}
    assert not any("subPath" in m for m in c["volumeMounts"])
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])


def test_persistent_checkpoints_keep_the_pod_locked_down():
    _, plain = job_for()
    body = sweep_manifest("demo", trainer={"checkpoints": {"pvc": "ckpt"}})
    job = build_job(parse_sweep(body), TrialKey(8, 1))
    pod, c, _ = _checkpoint_mounts(job)
    plain_pod, plain_c, _ = _checkpoint_mounts(plain)
    assert pod["securityContext"] == plain_pod["securityContext"]
    assert c["securityContext"] == plain_c["securityContext"]
    assert pod["automountServiceAccountToken"] is False


def test_the_spec_knows_every_volume_and_mount_path_a_job_has():
    """parse_sweep refuses pod-template volumes that would clash with these."""
    body = sweep_manifest("demo", trainer={
        "dataset": {"name": "lsun", "pvc": "lsun"},
        "inception": {"pvc": "weights", "file": "pt_inception.pth"},
        "checkpoints": {"pvc": "ckpt"}})
    pod = build_job(parse_sweep(body), TrialKey(8, 1))["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == set(JOB_VOLUMES)
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == set(JOB_MOUNT_PATHS)


def test_kueue_queue_label_and_suspended_creation():
    _, job = job_for(queueName="gpu-queue")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    _, job = job_for()
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert "suspend" not in job["spec"]


def test_retries_follow_backoff_limit_but_bad_configuration_fails_at_once():
    body = sweep_manifest("demo", trainer={"backoffLimit": 5})
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


@pytest.mark.parametrize(("key", "trainer"), [
    (TrialKey(2, 0), {}),
    (TrialKey(64, 1), {}),
    (TrialKey(64, 1), {"checkpoints": {"pvc": "ckpt"}}),
])
def test_job_manifest_passes_kubernetes_schema(key, trainer):
    kv = pytest.importorskip("kubernetes_validate")
    body = sweep_manifest("demo", trainer=trainer)
    job = copy.deepcopy(build_job(parse_sweep(body), key))
    job["metadata"]["ownerReferences"][0]["uid"] = "0000"
    kv.validate(job, "1.30", strict=True)


@pytest.mark.parametrize("trainer", [
    {},
    {"gpus": 2, "checkpoints": {"pvc": "ckpt"},
     "dataset": {"name": "lsun", "pvc": "lsun"},
     "inception": {"pvc": "weights", "file": "pt_inception.pth"}},
    {"podTemplate": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "labels": {"team": "ml"}, "annotations": {"example.com/owner": "ml"},
        "volumes": [{"name": "extra", "persistentVolumeClaim": {"claimName": "x"}},
                    {"name": "conf", "configMap": {"name": "c"}},
                    {"name": "fast", "emptyDir": {"medium": "Memory"}}],
        "volumeMounts": [{"name": "extra", "mountPath": "/x"}]}},
], ids=["plain", "claims and gpus", "what the default policy lets a template add"])
def test_the_trial_pod_passes_pod_security_restricted(trainer):
    """Sweep namespaces may enforce `pod-security.kubernetes.io/enforce: restricted`."""
    body = sweep_manifest("demo", trainer=trainer)
    job = build_job(admit(parse_sweep(body), Config()), TrialKey(8, 0))
    assert restricted_violations(job["spec"]["template"]) == []


def test_the_restricted_check_sees_what_an_administrator_may_allow():
    """The check above is not vacuous: what the policy keeps out, restricted refuses too."""
    body = sweep_manifest("demo")
    body["spec"]["trainer"]["podTemplate"] = {
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "annotations": {"container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"}}
    pod = build_job(parse_sweep(body), TrialKey(8, 0))["spec"]["template"]
    assert restricted_violations(pod) == ["volume root",
                                          "annotation container.apparmor.security.beta."
                                          "kubernetes.io/trainer"]
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["spec"]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    del pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    assert {"pod: seccomp Unconfined", "trainer: allowPrivilegeEscalation",
            "trainer: seccompProfile"} <= set(restricted_violations(pod))


# ---------------------------------------------------------------------------------------------
# Custom trainers (spec.trainer.command) and the trial protocol's variables
# ---------------------------------------------------------------------------------------------


def env_of(job):
    return {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def custom_job(key=None, **trainer):
    body = custom_manifest("demo", trainer=trainer)
    return job_of(body, key)


def test_a_custom_trainer_runs_its_command_as_a_list_without_a_shell_or_args():
    _, job = custom_job()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "classifier.train", "--quiet"]
    assert "args" not in c
    assert c["image"] == "registry.example/ml/classifier:1"


def test_a_custom_trainer_learns_its_trial_from_the_protocols_variables():
    _, job = custom_job(env=[{"name": "WANDB_MODE", "value": "offline"}])
    env = env_of(job)
    assert {k: v for k, v in env.items() if k in protocol.ALL_VARS} == {
        "CRITBATCH_PROTOCOL": "1", "CRITBATCH_SWEEP": "demo",
        "CRITBATCH_BATCH_SIZE": "8", "CRITBATCH_SEED": "1",
        "CRITBATCH_TARGET_METRIC": "accuracy", "CRITBATCH_TARGET_GOAL": "maximize",
        "CRITBATCH_TARGET_THRESHOLD": "0.9", "CRITBATCH_MAX_STEPS": "4000",
        "CRITBATCH_EVAL_EVERY": "10",
        # Metrics on the pod's port (every address), the result as its termination message,
        # checkpoints on its scratch space.
        "CRITBATCH_METRICS_PORT": "9100", "CRITBATCH_METRICS_HOST": "0.0.0.0",
        "CRITBATCH_RESULT_FILE": "/dev/termination-log",
        "CRITBATCH_CHECKPOINT_DIR": "/scratch/checkpoints", "CRITBATCH_DATA_PATH": ""}
    settings = TrialSettings.from_env(env)  # what the user's script reads
    assert (settings.key, settings.goal, settings.threshold) == (
        TrialKey(8, 1), Goal.maximize, 0.9)
    # The user's variables, and the home and caches a read-only root needs, are kept.
    assert env["WANDB_MODE"] == "offline" and env["HOME"] == "/scratch"
    assert env["XDG_CACHE_HOME"] == "/scratch/cache" and env["CRITBATCH_THREADS"] == "1"


def test_a_custom_trainers_pod_is_the_built_in_trainers_pod_but_for_what_it_runs():
    """One pod for any trainer: security, volumes, ports, labels, ownership, retries."""
    claims = {"dataset": {"pvc": "data", "path": "imagenet"}, "checkpoints": {"pvc": "ckpt"},
              "backoffLimit": 4}
    _, custom = custom_job(**claims)
    builtin_body = sweep_manifest("demo", trainer={**claims, "dataset": {
        "name": "digits", **claims["dataset"]}})
    _, builtin = job_of(builtin_body)
    for job in (custom, builtin):
        c = job["spec"]["template"]["spec"]["containers"][0]
        for field in ("command", "args", "env", "image"):
            c.pop(field, None)
    assert custom == builtin


def test_a_custom_trainer_gets_its_claims_and_no_built_in_flags():
    _, job = custom_job(dataset={"pvc": "data", "path": "shards"}, checkpoints={"pvc": "ckpt"})
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints",
            "subPath": "demo-b8-s1"} in c["volumeMounts"]
    assert env_of(job)["CRITBATCH_CHECKPOINT_DIR"] == "/checkpoints"
    assert env_of(job)["CRITBATCH_DATA_PATH"] == "/data/shards"  # where the claim's path is
    # The built-in trainer's flags are not the user's program's: nothing is added to it.
    assert c["command"] == ["python", "-m", "classifier.train", "--quiet"] and "args" not in c


def test_a_custom_trainers_bad_configuration_fails_its_job_at_once():
    _, job = custom_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                 "values": [2]}} in rules


def test_a_custom_trainers_pod_passes_pod_security_restricted_and_the_schema():
    sweep = admit(parse_sweep(custom_manifest("demo", trainer={"checkpoints": {"pvc": "c"}})),
                  Config())
    job = build_job(sweep, TrialKey(8, 0))
    assert restricted_violations(job["spec"]["template"]) == []
    kv = pytest.importorskip("kubernetes_validate")
    job["metadata"]["ownerReferences"][0]["uid"] = "0000"
    kv.validate(copy.deepcopy(job), "1.30", strict=True)


def test_the_built_in_trainers_single_trial_gets_the_protocols_variables_too():
    _, job = job_for()
    env = env_of(job)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = TrialSettings.from_env(env)
    # The variables say what the flags say (the flags win in the trainer, so both must agree).
    flags = {f: args[args.index(f) + 1] for f in (
        "--batch-size", "--seed", "--max-steps", "--fid-threshold", "--metrics-port",
        "--checkpoint-dir", "--termination-log", "--sweep")}
    assert flags == {"--batch-size": str(settings.batch_size), "--seed": str(settings.seed),
                     "--max-steps": str(settings.max_steps),
                     "--fid-threshold": repr(settings.threshold),
                     "--metrics-port": str(settings.metrics_port),
                     "--checkpoint-dir": settings.checkpoint_dir,
                     "--termination-log": settings.result_file, "--sweep": settings.sweep}
    assert (settings.key, settings.metric, settings.goal) == (TrialKey(8, 1), "fid",
                                                              Goal.minimize)


def test_a_job_of_several_trials_gets_none_of_one_trials_variables():
    body = sweep_manifest("demo", trialsPerGPU=2, trainer={"gpus": 1})
    job = build_job(parse_sweep(body), (TrialKey(8, 0), TrialKey(16, 0)))
    assert not set(env_of(job)) & set(protocol.ALL_VARS)
