"""Kubernetes Job manifests for trials: pure functions of the sweep, no API calls.

Every trial runs in one batch/v1 Job (a Job runs `spec.trialsPerGPU` trials in its one pod)
with a deterministic name (so a restart cannot create a duplicate), owned by its sweep (so
deleting the sweep deletes its Jobs), running the trainer with its arguments as a list, as a
non-root user on a read-only root filesystem: a pod that Pod Security Admission's `restricted`
level admits, unless the administrator's policy let the sweep's pod template add more.

A custom trainer (`spec.trainer.command`) gets the same pod: only its container's command and
environment differ, since it learns its trial from the trial protocol's variables alone.

A data-parallel trial (`spec.trainer.nodes` x processes per node > 1) runs the trainer under
PyTorch's launcher; on several nodes its Job is Indexed, one pod per node, and a headless
Service (`build_service`) names node 0 for the others (`critbatch_operator.indexed`).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from typing import Any

from critbatch.launch import RENDEZVOUS_PORT, Rendezvous, launch_command
from critbatch.planner import job_name
from critbatch.spec import (
    API_VERSION,
    KIND,
    Sweep,
    check_pod_template,
    check_prometheus_url,
    resume_checkpoint_every,
)
from critbatch.trainer_args import trainer_args, trial_env
from critbatch.vocabulary import TrialKey, trials_text
from critbatch_operator.config import Config
from critbatch_operator.indexed import JOB_NAME_LABEL, check_names, rendezvous, service_name

MANAGED_BY = "app.kubernetes.io/managed-by"
SWEEP_LABEL = "critbatch.dev/sweep"
BATCH_LABEL = "critbatch.dev/batch-size"
SEED_LABEL = "critbatch.dev/seed"
TRIALS_ANNOTATION = "critbatch.dev/trials"  # "b:s,b:s": every trial the Job's pod runs
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
TERMINATION_LOG = "/dev/termination-log"
SCRATCH = "/scratch"
DATA_MOUNT = "/data"
INCEPTION_MOUNT = "/inception"
CHECKPOINT_MOUNT = "/checkpoints"  # the trial's own directory of spec.trainer.checkpoints.pvc
CACHE_MOUNT = f"{SCRATCH}/cache"  # XDG_CACHE_HOME: FID statistics, decoded datasets
CACHE_SUBPATH = ".cache"  # on the checkpoints claim, shared by all Jobs (no Job has this name)
RUN_AS = 65532
BAD_CONFIG_EXIT = 2  # the trainer's "bad configuration": retrying cannot help
LAUNCHER_PYTHON = "python"  # the trainer image's interpreter, which has torch


def admit(sweep: Sweep, cfg: Config) -> Sweep:
    """The sweep, if the operator's policy grants what it asks for; else SpecError naming the
    field (the sweep's InvalidSpec). The operator creates Jobs and queries Prometheus with its own
    rights, so a sweep's author gets only what `cfg` lets every author have: a pod template that
    widens no access unless allowed, and only listed Prometheus URLs. Trials on several nodes
    also need Job names short enough for their pods' host names."""
    check_pod_template(sweep.trainer.pod_template, cfg.allow_pod_template)
    check_names(sweep)
    if sweep.metrics.prometheus_url is not None:
        check_prometheus_url(sweep.metrics.prometheus_url, cfg.allow_prometheus_urls,
                             cfg.prometheus_url)
    return sweep


def trial_labels(sweep: Sweep, key: TrialKey) -> dict[str, str]:
    """The labels on every object the operator makes for a trial (docs/operator.md)."""
    return {
        MANAGED_BY: "critbatch",
        SWEEP_LABEL: sweep_label_value(sweep.name),
        BATCH_LABEL: str(key.batch_size),
        SEED_LABEL: str(key.seed),
    }


def sweep_label_value(name: str) -> str:
    """Sweep names are DNS subdomains (253 chars); label values stop at 63: cut and hash."""
    if len(name) <= 63:
        return name
    return name[:56].rstrip("-.") + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]


def owner_reference(sweep: Sweep) -> dict[str, Any]:
    """The sweep as controller owner, so the garbage collector deletes its Jobs with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": sweep.name,
        "uid": sweep.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def cpu_threads(resources: dict[str, dict[str, Any]]) -> int | None:
    """Whole CPUs of the container's limit, else its request ("2", 2, "2500m"); None if unset."""
    for kind in ("limits", "requests"):
        value = str((resources.get(kind) or {}).get("cpu", "")).strip()
        try:
            cores = int(value[:-1]) / 1000 if value.endswith("m") else float(value)
        except ValueError:
            continue
        return max(1, int(cores))
    return None


def trainer_command(sweep: Sweep, keys: Sequence[TrialKey], *, metrics_port: int,
                    checkpoint_dir: str, data_path: str | None, extractor: str | None,
                    meet: Rendezvous | None = None) -> tuple[list[str], list[str] | None]:
    """The container's command and args: `spec.trainer.command` as it is (no args: a custom
    trainer reads the protocol's variables), else `critbatch-trainer` with its flags, under
    PyTorch's launcher when the trial has several workers (`meet`: where several nodes meet)."""
    t = sweep.trainer
    if t.custom:
        return list(t.command), None
    args = trainer_args(sweep, keys, metrics_port=metrics_port, checkpoint_dir=checkpoint_dir,
                        termination_log=TERMINATION_LOG, data_path=data_path,
                        extractor=extractor)
    if t.checkpoints is not None and not t.checkpoint_every:
        # Without a period the trainer checkpoints only on SIGTERM: a crash would start over.
        args += ["--checkpoint-every", str(resume_checkpoint_every(sweep))]
    cmd = launch_command(["critbatch-trainer", *args], python=LAUNCHER_PYTHON,
                         processes=t.processes_per_node, nodes=t.nodes, rendezvous=meet)
    return cmd[:1], cmd[1:]


def build_job(sweep: Sweep, trials: TrialKey | Sequence[TrialKey], *, metrics_port: int = 9100,
              default_image: str | None = None) -> dict[str, Any]:
    """The batch/v1 Job of one trial, or of a pod's trials (labelled as its first, all of them
    in the `critbatch.dev/trials` annotation); `default_image` serves sweeps that name none.
    The pod template is copied as it is: the sweep must have passed `admit`."""
    keys = [trials] if isinstance(trials, TrialKey) else list(trials)
    key = keys[0]
    listed = trials_text(keys)
    t = sweep.trainer
    tpl = t.pod_template
    labels = trial_labels(sweep, key)
    job_labels = dict(labels)
    if sweep.queue_name:
        job_labels[QUEUE_LABEL] = sweep.queue_name

    volumes: list[dict[str, Any]] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    data_path = t.dataset.path
    if t.dataset.pvc:
        volumes.append({"name": "dataset", "persistentVolumeClaim": {
            "claimName": t.dataset.pvc, "readOnly": True}})
        mounts.append({"name": "dataset", "mountPath": DATA_MOUNT, "readOnly": True})
        data_path = posixpath.join(DATA_MOUNT, (t.dataset.path or "").lstrip("/")).rstrip("/")
    extractor = None
    if t.inception is not None and t.inception.pvc:
        volumes.append({"name": "inception", "persistentVolumeClaim": {
            "claimName": t.inception.pvc, "readOnly": True}})
        mounts.append({"name": "inception", "mountPath": INCEPTION_MOUNT, "readOnly": True})
        extractor = "inception:" + posixpath.join(INCEPTION_MOUNT, t.inception.file)
    name = job_name(sweep.name, key)
    checkpoint_dir = posixpath.join(SCRATCH, "checkpoints")  # lost with the pod
    if t.checkpoints is not None:
        # The Job's name is deterministic, so every retry of its trials, and only of them,
        # finds the same directory on the claim and resumes from it.
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {
            "claimName": t.checkpoints.pvc}})
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT, "subPath": name})
        # The real statistics and a decoded dataset are computed once per claim, not per Job.
        mounts.append({"name": "checkpoints", "mountPath": CACHE_MOUNT,
                       "subPath": CACHE_SUBPATH})
        checkpoint_dir = CHECKPOINT_MOUNT
    volumes += [dict(v) for v in tpl.volumes]
    mounts += [dict(m) for m in tpl.volume_mounts]

    several = t.nodes > 1
    command, args = trainer_command(sweep, keys, metrics_port=metrics_port,
                                    checkpoint_dir=checkpoint_dir, data_path=data_path,
                                    extractor=extractor, meet=rendezvous(name) if several else None)
    # One trial's protocol variables (a group's trials each get theirs from the group process).
    protocol = trial_env(sweep, key, metrics_port=metrics_port, result_file=TERMINATION_LOG,
                         checkpoint_dir=checkpoint_dir, data_path=data_path or None) \
        if len(keys) == 1 else {}
    env = [
        {"name": "HOME", "value": SCRATCH},
        {"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
        {"name": "TORCH_HOME", "value": f"{CACHE_MOUNT}/torch"},
        {"name": "MPLCONFIGDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ] + [{"name": n, "value": v} for n, v in t.env]

    # Quantities as the API's strings: the client refuses numbers.
    resources: dict[str, dict[str, Any]] = {
        k: {n: str(q) for n, q in v.items()} for k, v in t.resources.items()}
    threads = cpu_threads(resources)
    if threads and not {n for n, _ in t.env} & {"CRITBATCH_THREADS", "OMP_NUM_THREADS"}:
        # torch would start a thread per core of the node; a trial group splits these.
        env.append({"name": "CRITBATCH_THREADS", "value": str(threads)})
    # spec.trainer.env may not name these: which trial a pod runs is the operator's to say.
    env += [{"name": n, "value": v} for n, v in protocol.items()]
    named = any("nvidia.com/gpu" in v for v in resources.values())
    if t.gpus and not named:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(t.gpus)

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": t.image or default_image,
        "command": command,
        **({"args": args} if args is not None else {}),
        "ports": [{"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The result JSON on success; the log's tail explains a crash.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if t.image_pull_policy:
        container["imagePullPolicy"] = t.image_pull_policy
    if several:
        container["ports"].append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT,
                                   "protocol": "TCP"})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    optional = {
        "nodeSelector": dict(tpl.node_selector) or None,
        "tolerations": [dict(x) for x in tpl.tolerations] or None,
        "affinity": dict(tpl.affinity) if tpl.affinity else None,
        "priorityClassName": tpl.priority_class_name,
        "runtimeClassName": tpl.runtime_class_name,
        "serviceAccountName": tpl.service_account_name,
        "imagePullSecrets": [{"name": n} for n in tpl.image_pull_secrets] or None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    if several:
        pod_spec["subdomain"] = service_name(name)  # host <job>-<index>.<service>

    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
        **tpl.annotations,
        TRIALS_ANNOTATION: listed,
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": t.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {
                "containerName": CONTAINER, "operator": "In", "values": [BAD_CONFIG_EXIT]}},
            {"action": "Ignore",
             "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {
            "metadata": {"labels": {**tpl.labels, **labels}, "annotations": annotations},
            "spec": pod_spec,
        },
    }
    if several:
        job_spec.update(completionMode="Indexed", completions=t.nodes, parallelism=t.nodes)
    if t.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = t.active_deadline_seconds
    if sweep.queue_name:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": sweep.namespace,
            "labels": job_labels,
            "annotations": {"critbatch.dev/generation": str(sweep.generation),
                            TRIALS_ANNOTATION: listed},
            "ownerReferences": [owner_reference(sweep)],
        },
        "spec": job_spec,
    }


def build_service(sweep: Sweep, key: TrialKey) -> dict[str, Any]:
    """The headless Service of a trial on several nodes: it gives its pods the DNS names
    `<job>-<index>.<service>` (even before they are ready) so the launchers find node 0. Labels
    and owner as on the trial's Job (no queue label: Kueue admits Jobs, not Services)."""
    name = job_name(sweep.name, key)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": sweep.namespace,
            "labels": trial_labels(sweep, key),
            "ownerReferences": [owner_reference(sweep)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT,
                       "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }
