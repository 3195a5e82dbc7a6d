"""What a sweep may ask of the operator: the pod-template policy and the Prometheus URLs.

The operator creates trial Jobs with its own ServiceAccount for whoever may create a sweep, so
by default a pod template may add only what cannot widen that person's access; a cluster
administrator allows more by name (critbatch-operator --allow-pod-template). The local runner
runs trials as its user's own processes and applies no policy. The trial Job's own volumes and
mount paths are no one's to take, and parse_sweep refuses them on every backend.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from critbatch.spec.fields import field_error
from critbatch.spec.model import GROUP, PodTemplate

# What the trial Job already has (critbatch_operator.jobs): a pod template must not reuse them.
JOB_VOLUMES = ("scratch", "tmp", "dshm", "dataset", "inception", "checkpoints")
JOB_MOUNT_PATHS = ("/scratch", "/scratch/cache", "/tmp", "/dev/shm", "/data", "/inception",
                   "/checkpoints")

VOLUME_SOURCES = (
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi",
    "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk",
    "gitRepo", "glusterfs", "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim",
    "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "secret",
    "storageos", "vsphereVolume",
)
SAFE_VOLUME_SOURCES = ("persistentVolumeClaim", "configMap", "emptyDir")
POD_TEMPLATE_ALLOWANCES = (
    "serviceAccountName", "runtimeClassName", "priorityClassName", "imagePullSecrets",
    "anyToleration", "crossNamespaceAffinity", "securityAnnotations", "kubernetesMetadata",
    *(v for v in VOLUME_SOURCES if v not in SAFE_VOLUME_SOURCES),
)
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# Annotations read by the kubelet, the container runtime or the CNI plugin: security profiles,
# sysctls, runtime sandboxes, extra networks, fixed IP addresses.
_SECURITY_WORDS = ("apparmor", "seccomp", "selinux", "security", "sysctl")
_RUNTIME_ANNOTATIONS = ("io.kubernetes.", "io.katacontainers.", "io.containerd.", "dev.gvisor.",
                        "k8s.v1.cni.cncf.io/", "v1.multus-cni.io/", "cni.projectcalico.org/")
_OWN = "own"  # the operator's own labels and annotations: no administrator may hand them out
_MANAGED_BY = "app.kubernetes.io/managed-by"
_TEMPLATE = "spec.trainer.podTemplate"


def _under(domain: str, root: str) -> bool:
    return domain == root or domain.endswith("." + root)


def _reserved(key: str, *, annotation: bool) -> str | None:
    """The allowance a label or annotation key needs, `_OWN` for never, None for none."""
    lower = key.lower()
    prefix = lower.partition("/")[0] if "/" in lower else ""
    if _under(prefix, GROUP) or lower == _MANAGED_BY:
        return _OWN
    if annotation and (any(w in lower for w in _SECURITY_WORDS)
                       or lower.startswith(_RUNTIME_ANNOTATIONS)):
        return "securityAnnotations"
    if _under(prefix, "kubernetes.io") or _under(prefix, "k8s.io"):
        return "kubernetesMetadata"
    return None


def _cross_namespace_terms(affinity: Any, path: str) -> list[str]:
    """Paths of pod (anti-)affinity terms that look at pods of other namespaces."""
    found: list[str] = []
    if not isinstance(affinity, Mapping):
        return found
    for kind in ("podAffinity", "podAntiAffinity"):
        rules = affinity.get(kind)
        for when, terms in (rules.items() if isinstance(rules, Mapping) else ()):
            for i, term in enumerate(terms if isinstance(terms, list) else ()):
                p = f"{path}.{kind}.{when}[{i}]"
                if isinstance(term, Mapping) and "podAffinityTerm" in term:
                    term, p = term["podAffinityTerm"], f"{p}.podAffinityTerm"
                if isinstance(term, Mapping):
                    # Unset (or an empty list of names) means the pod's own namespace.
                    found += [f"{p}.{k}" for k in ("namespaces", "namespaceSelector")
                              if term.get(k) not in (None, [])]
    return found


def check_pod_template(template: PodTemplate, allow: Collection[str] = frozenset()) -> None:
    """Refuse what the operator's policy keeps out of trial pods (SpecError naming the first such
    field): `allow` holds the POD_TEMPLATE_ALLOWANCES a cluster administrator granted."""
    path = _TEMPLATE

    def need(name: str, where: str) -> None:
        if name not in allow:
            raise field_error(where, "not allowed by the operator's policy (the cluster "
                                     f"administrator can allow it: --allow-pod-template={name}, "
                                     "Helm value sweepPolicy.allowPodTemplate)")

    for key, value in (("serviceAccountName", template.service_account_name),
                       ("runtimeClassName", template.runtime_class_name),
                       ("priorityClassName", template.priority_class_name),
                       ("imagePullSecrets", template.image_pull_secrets)):
        if value:
            need(key, f"{path}.{key}")
    for i, volume in enumerate(template.volumes):
        for source in volume:
            where = f"{path}.volumes[{i}].{source}"
            if source == "name" or source in SAFE_VOLUME_SOURCES:
                continue
            if source not in VOLUME_SOURCES:
                raise field_error(where, "not a volume source the operator knows")
            need(source, where)
    for i, toleration in enumerate(template.tolerations):
        key = toleration.get("key") or ""
        if key in CONTROL_PLANE_TAINTS:
            need("anyToleration", f"{path}.tolerations[{i}].key")
        elif not key and toleration.get("operator") == "Exists":
            need("anyToleration", f"{path}.tolerations[{i}].operator")
    for where in _cross_namespace_terms(template.affinity, f"{path}.affinity"):
        need("crossNamespaceAffinity", where)
    for kind, keys in (("labels", template.labels), ("annotations", template.annotations)):
        for key in keys:
            where = f"{path}.{kind}[{key!r}]"
            rule = _reserved(key, annotation=kind == "annotations")
            if rule == _OWN:
                raise field_error(where, "reserved for the operator's own bookkeeping")
            if rule:
                need(rule, where)


def _url_under(url: str, prefix: str) -> bool:
    """Whether `url` is on `prefix`'s scheme, host and port, at or below its path."""
    try:
        u, p = urlsplit(url), urlsplit(prefix)
        ports = {"http": 80, "https": 443}
        u_port, p_port = u.port or ports.get(u.scheme), p.port or ports.get(p.scheme)
    except ValueError:
        return False
    if u.username is not None or not u.hostname or "\\" in url:
        return False
    if (u.scheme, u.hostname, u_port) != (p.scheme, p.hostname, p_port):
        return False
    if {".", ".."} & set(unquote(u.path).split("/")):
        return False
    base = p.path.rstrip("/")
    return u.path == base or u.path.startswith(base + "/")


def check_prometheus_url(url: str, allowed: Sequence[str] = (), default: str | None = None,
                         ) -> None:
    """Refuse a sweep's Prometheus URL unless it is the operator's own (`default`) or under one
    of the `allowed` prefixes: the operator, not the sweep's author, sends the requests."""
    if default and url.rstrip("/") == default.rstrip("/"):
        return
    if any(_url_under(url, prefix) for prefix in allowed):
        return
    raise field_error("spec.metrics.prometheusURL", "not allowed by the operator's policy: it "
                      "queries only its own Prometheus and the URLs the cluster administrator "
                      "lists (--allow-prometheus-url, Helm value sweepPolicy.allowPrometheusURLs)")
