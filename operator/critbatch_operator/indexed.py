"""Names and ranks of a trial on several nodes (`spec.trainer.nodes` > 1): pure, no API calls.

Such a trial runs as one Indexed Job of `nodes` pods and one headless Service (docs/operator.md,
data-parallel trials). The Job controller names each pod's host `<job>-<index>` and gives it
`JOB_COMPLETION_INDEX`; with the pod's `subdomain` set to the Service, node 0 is reachable as
`<job>-0.<service>`, where the launchers meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from critbatch.launch import Rendezvous
from critbatch.planner import job_name
from critbatch.spec import SpecError, Sweep

INDEX_KEY = "batch.kubernetes.io/job-completion-index"  # annotation (and label) on its pods
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # the Job controller's label on its pods
NODE_RANK = "$(JOB_COMPLETION_INDEX)"  # the kubelet expands it from the pod's environment
MAX_LABEL = 63


def service_name(job: str) -> str:
    """The trial's Service: the Job's name, a DNS-1035 label unless it starts with a digit (a
    sweep's name may); then `t<job>-r`, which no Job name can be (they end in a seed)."""
    return job if job[:1].isalpha() else f"t{job}-r"


def rendezvous(job: str) -> Rendezvous:
    """Where the launchers of the Job's pods meet: node 0's host in the trial's Service."""
    return Rendezvous(host=f"{job}-0.{service_name(job)}", node_rank=NODE_RANK)


def max_job_name(nodes: int) -> int:
    """The longest Job name whose pods' host names `<job>-<index>` stay DNS labels."""
    return MAX_LABEL - len(f"-{nodes - 1}")


def check_names(sweep: Sweep) -> None:
    """SpecError unless every trial's Job can run on `spec.trainer.nodes` pods: their host
    names are the Job's name and index (the Job controller does not shorten them), and the
    Service's name is a label too."""
    nodes = sweep.trainer.nodes
    if nodes <= 1:
        return
    for key in sweep.trials():
        job = job_name(sweep.name, key)
        limit = min(max_job_name(nodes), MAX_LABEL - len(service_name(job)) + len(job))
        if len(job) > limit:
            raise SpecError(f"metadata.name: too long for trials on {nodes} nodes: their pods' "
                            f"host names are <job>-<index> and their Service's name is a label, "
                            f"so Job {job} may have {limit} characters, not {len(job)}; "
                            "shorten the sweep's name")


def pod_index(pod: Mapping[str, Any]) -> str | None:
    """The pod's completion index in an Indexed Job, else None."""
    meta = pod.get("metadata") or {}
    for where in ("annotations", "labels"):
        value = (meta.get(where) or {}).get(INDEX_KEY)
        if value is not None:
            return str(value)
    return None


def speaks_for_trial(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's trainer is the trial's rank 0 (the one that serves metrics and writes
    the result): a pod of an ordinary Job, or index 0 of an Indexed one."""
    return pod_index(pod) in (None, "0")


def is_indexed(job: Mapping[str, Any]) -> bool:
    return (job.get("spec") or {}).get("completionMode") == "Indexed"
