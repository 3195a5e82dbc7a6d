"""The operator's policy: what a sweep's author may have the operator do for them.

Whoever may create a CriticalBatchSweep gets Jobs that the operator's own ServiceAccount creates
and Prometheus queries that the operator sends: by default a pod template may add only what
cannot widen its author's access, and a sweep may name only Prometheus URLs the administrator
listed. Every refusal is the sweep's InvalidSpec with the field named.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sweeps import sweep_manifest

from critbatch.spec import POD_TEMPLATE_ALLOWANCES, SpecError, check_prometheus_url, parse_sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.__main__ import parse_args
from critbatch_operator.config import Config
from critbatch_operator.jobs import admit, build_job
from critbatch_operator.reconcile import SweepState, reconcile

TPL = "spec.trainer.podTemplate"


def with_template(**template: Any) -> dict:
    return sweep_manifest("demo", trainer={"podTemplate": template})


def admitted(body: dict, **cfg: Any) -> Any:
    return admit(parse_sweep(body), Config(**cfg))


def _affinity(kind: str, term: dict) -> dict:
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}},
         **term}]}}


# (what, pod template, the field the refusal names, the allowance that lets it through)
HOSTILE = [
    ("hostPath of /", {"volumes": [{"name": "data", "emptyDir": {}},
                                   {"name": "root", "hostPath": {"path": "/"}}]},
     f"{TPL}.volumes[1].hostPath", "hostPath"),
    ("container runtime socket", {"volumes": [{"name": "sock", "hostPath": {
        "path": "/run/containerd/containerd.sock", "type": "Socket"}}],
        "volumeMounts": [{"name": "sock", "mountPath": "/run/containerd.sock"}]},
     f"{TPL}.volumes[0].hostPath", "hostPath"),
    ("secret volume", {"volumes": [{"name": "creds", "secret": {"secretName": "db-admin"}}]},
     f"{TPL}.volumes[0].secret", "secret"),
    ("projected service-account token", {
        "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
            "path": "token", "audience": "https://kubernetes.default.svc"}}]}}]},
     f"{TPL}.volumes[0].projected", "projected"),
    ("csi volume", {"volumes": [{"name": "vault", "csi": {
        "driver": "secrets-store.csi.k8s.io", "volumeAttributes": {"secretProviderClass": "x"}}}]},
     f"{TPL}.volumes[0].csi", "csi"),
    ("nfs volume", {"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}]},
     f"{TPL}.volumes[0].nfs", "nfs"),
    ("serviceAccountName", {"serviceAccountName": "critbatch"},
     f"{TPL}.serviceAccountName", "serviceAccountName"),
    ("runtimeClassName", {"runtimeClassName": "unsandboxed"},
     f"{TPL}.runtimeClassName", "runtimeClassName"),
    ("priorityClassName", {"priorityClassName": "system-node-critical"},
     f"{TPL}.priorityClassName", "priorityClassName"),
    ("imagePullSecrets", {"imagePullSecrets": [{"name": "other-teams-registry"}]},
     f"{TPL}.imagePullSecrets", "imagePullSecrets"),
    ("AppArmor unconfined annotation", {"annotations": {
        "container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"}},
     f"{TPL}.annotations['container.apparmor.security.beta.kubernetes.io/trainer']",
     "securityAnnotations"),
    ("seccomp annotation", {"annotations": {"seccomp.security.alpha.kubernetes.io/pod":
                                            "unconfined"}},
     f"{TPL}.annotations['seccomp.security.alpha.kubernetes.io/pod']", "securityAnnotations"),
    ("runtime annotation", {"annotations": {"io.kubernetes.cri-o.Devices": "/dev/kmsg"}},
     f"{TPL}.annotations['io.kubernetes.cri-o.Devices']", "securityAnnotations"),
    ("extra network annotation", {"annotations": {"k8s.v1.cni.cncf.io/networks": "host-net"}},
     f"{TPL}.annotations['k8s.v1.cni.cncf.io/networks']", "securityAnnotations"),
    ("control-plane toleration", {"tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
         "effect": "NoSchedule"}]},
     f"{TPL}.tolerations[1].key", "anyToleration"),
    ("master toleration", {"tolerations": [{"key": "node-role.kubernetes.io/master",
                                            "operator": "Equal", "value": ""}]},
     f"{TPL}.tolerations[0].key", "anyToleration"),
    ("blanket Exists toleration", {"tolerations": [{"operator": "Exists"}]},
     f"{TPL}.tolerations[0].operator", "anyToleration"),
    ("pod affinity with namespaceSelector", {"affinity": _affinity(
        "podAffinity", {"namespaceSelector": {}})},
     f"{TPL}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
     ".namespaceSelector", "crossNamespaceAffinity"),
    ("pod anti-affinity naming namespaces", {"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "namespaces": ["kube-system"]}}]}}},
     f"{TPL}.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
     ".podAffinityTerm.namespaces", "crossNamespaceAffinity"),
    ("kubernetes.io label", {"labels": {"node-restriction.kubernetes.io/x": "y"}},
     f"{TPL}.labels['node-restriction.kubernetes.io/x']", "kubernetesMetadata"),
    ("k8s.io annotation", {"annotations": {"cluster-autoscaler.k8s.io/x": "y"}},
     f"{TPL}.annotations['cluster-autoscaler.k8s.io/x']", "kubernetesMetadata"),
]


@pytest.mark.parametrize(("what", "template", "field", "allowance"), HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_hostile_pod_templates_are_refused_with_the_field_named(what, template, field,
                                                                allowance):
    body = with_template(**template)
    parse_sweep(body)  # the schema's checks pass: the refusal is the operator's policy
    with pytest.raises(SpecError) as exc:
        admitted(body)
    message = str(exc.value)
    assert message.startswith(f"{field}: not allowed by the operator's policy"), message
    assert f"--allow-pod-template={allowance}" in message
    assert "sweepPolicy.allowPodTemplate" in message


@pytest.mark.parametrize(("what", "template", "field", "allowance"), HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_the_administrator_can_allow_each_of_them(what, template, field, allowance):
    assert allowance in POD_TEMPLATE_ALLOWANCES
    sweep = admitted(with_template(**template), allow_pod_template=frozenset({allowance}))
    job = build_job(sweep, TrialKey(8, 0))
    pod = job["spec"]["template"]
    if "volumes" in template:
        assert template["volumes"][-1] in pod["spec"]["volumes"]
    for key in ("serviceAccountName", "runtimeClassName", "priorityClassName",
                "tolerations", "affinity"):
        if key in template:
            assert pod["spec"][key] == template[key]
    for key, value in template.get("annotations", {}).items():
        assert pod["metadata"]["annotations"][key] == value
    # Allowing one thing allows nothing else.
    others = frozenset(POD_TEMPLATE_ALLOWANCES) - {allowance}
    with pytest.raises(SpecError, match="not allowed"):
        admitted(with_template(**template), allow_pod_template=others)


@pytest.mark.parametrize("template", [
    {"labels": {"critbatch.dev/sweep": "another"}},
    {"labels": {"app.kubernetes.io/managed-by": "helm"}},
    {"annotations": {"critbatch.dev/trials": "2:0"}},
    {"annotations": {"runs.critbatch.dev/x": "y"}},
], ids=["sweep label", "managed-by", "trials annotation", "critbatch subdomain"])
def test_the_operators_own_metadata_is_never_handed_out(template):
    with pytest.raises(SpecError, match="reserved for the operator's own bookkeeping") as exc:
        admitted(with_template(**template),
                 allow_pod_template=frozenset(POD_TEMPLATE_ALLOWANCES))
    (key,) = next(iter(template.values()))
    assert str(exc.value).startswith(f"{TPL}.{next(iter(template))}[{key!r}]")


def test_an_unknown_volume_source_is_refused_even_when_everything_is_allowed():
    body = with_template(volumes=[{"name": "x", "someFutureDriver": {}}])
    with pytest.raises(SpecError, match=r"volumes\[0\]\.someFutureDriver: not a volume source"):
        admitted(body, allow_pod_template=frozenset(POD_TEMPLATE_ALLOWANCES))


BENIGN = {
    "node selector": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
    "node affinity": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node.kubernetes.io/instance-type",
                                   "operator": "In", "values": ["c7i.4xlarge"]}]}]}}}},
    "pod anti-affinity in the namespace": {"affinity": _affinity(
        "podAntiAffinity", {"namespaces": []})},
    "gpu and team tolerations": {"tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "team", "operator": "Equal", "value": "ml"}]},
    "claim, config map and memory emptyDir": {
        "volumes": [{"name": "extra", "persistentVolumeClaim": {"claimName": "more-data"}},
                    {"name": "conf", "configMap": {"name": "trainer-conf"}},
                    {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    {"name": "defaulted"}],
        "volumeMounts": [{"name": "extra", "mountPath": "/more", "readOnly": True},
                         {"name": "conf", "mountPath": "/etc/trainer"},
                         {"name": "fast", "mountPath": "/fast"}]},
    "team labels and annotations": {
        "labels": {"team": "ml", "example.com/cost-center": "42"},
        "annotations": {"example.com/owner": "gan-research", "prometheus.io/scrape": "true"}},
}


@pytest.mark.parametrize("template", BENIGN.values(), ids=BENIGN.keys())
def test_benign_pod_templates_pass_the_default_policy(template):
    sweep = admitted(with_template(**template))
    pod = build_job(sweep, TrialKey(8, 0))["spec"]["template"]
    assert template.get("labels", {}).items() <= pod["metadata"]["labels"].items()
    for key in ("nodeSelector", "tolerations", "affinity"):
        if key in template:
            assert pod["spec"][key] == template[key]


# ---------------------------------------------------------------------------------------------
# spec.metrics.prometheusURL
# ---------------------------------------------------------------------------------------------

OWN = "http://prometheus-operated.monitoring.svc:9090"
LISTED = ("https://thanos.example.com/prometheus/", "http://prometheus.team-a.svc:9090")


@pytest.mark.parametrize("url", [
    OWN, OWN + "/",
    "https://thanos.example.com/prometheus", "https://thanos.example.com/prometheus/tenant-a",
    "https://THANOS.example.com:443/prometheus/",
    "http://prometheus.team-a.svc:9090", "http://prometheus.team-a.svc:9090/",
])
def test_the_operators_own_and_listed_prometheus_urls_are_allowed(url):
    check_prometheus_url(url, LISTED, OWN)
    admitted(sweep_manifest("demo", metrics={"prometheusURL": url}),
             prometheus_url=OWN, allow_prometheus_urls=LISTED)


@pytest.mark.parametrize("url", [
    "http://kubernetes.default.svc:443",                     # not listed
    "http://10.0.0.1:9090",
    "http://prometheus-operated.monitoring.svc:9091",        # another port of the own host
    "https://thanos.example.com/prometheus-admin",           # a sibling path, not below
    "https://thanos.example.com/prometheus/../admin",        # climbs out of the prefix
    "https://thanos.example.com/prometheus/%2e%2e/admin",
    "http://thanos.example.com/prometheus/",                 # another scheme
    "http://prometheus.team-a.svc:9090@evil.example.com/",   # credentials, another host
    "http://prometheus.team-a.svc:90900/",
    "http://prometheus.team-a.svc.evil.example.com:9090/",
])
def test_other_prometheus_urls_are_refused(url):
    with pytest.raises(SpecError) as exc:
        admitted(sweep_manifest("demo", metrics={"prometheusURL": url}),
                 prometheus_url=OWN, allow_prometheus_urls=LISTED)
    message = str(exc.value)
    assert message.startswith("spec.metrics.prometheusURL: not allowed by the operator's policy")
    assert "--allow-prometheus-url" in message and url not in message


def test_by_default_a_sweep_may_name_no_prometheus_but_the_operators():
    body = sweep_manifest("demo", metrics={"prometheusURL": "http://prom.team-a.svc:9090"})
    with pytest.raises(SpecError, match="prometheusURL"):
        admitted(body)
    with pytest.raises(SpecError, match="prometheusURL"):
        admitted(body, prometheus_url=OWN)
    admitted(body, prometheus_url="http://prom.team-a.svc:9090")
    admitted(sweep_manifest("demo"))  # no URL: the operator's own, or a direct scrape


# ---------------------------------------------------------------------------------------------
# The administrator's knobs, and the refusal as the sweep's status
# ---------------------------------------------------------------------------------------------


def test_the_policy_is_strict_unless_configured():
    assert Config().allow_pod_template == frozenset()
    assert Config().allow_prometheus_urls == ()
    assert Config.from_env({}) == Config()
    cfg, _ = parse_args([])
    assert cfg.allow_pod_template == frozenset() and cfg.allow_prometheus_urls == ()


def test_the_policy_comes_from_the_environment_or_the_flags(monkeypatch):
    env = {"CRITBATCH_ALLOW_POD_TEMPLATE": "hostPath, priorityClassName",
           "CRITBATCH_ALLOW_PROMETHEUS_URLS": "http://a.svc:9090/,https://b.example.com/p"}
    cfg = Config.from_env(env)
    assert cfg.allow_pod_template == {"hostPath", "priorityClassName"}
    assert cfg.allow_prometheus_urls == ("http://a.svc:9090/", "https://b.example.com/p")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg, _ = parse_args([])
    assert cfg.allow_pod_template == {"hostPath", "priorityClassName"}
    cfg, _ = parse_args(["--allow-pod-template", "secret,csi", "--allow-pod-template=projected",
                         "--allow-prometheus-url", "http://c.svc:9090"])
    assert cfg.allow_pod_template == {"secret", "csi", "projected"}
    assert cfg.allow_prometheus_urls == ("http://c.svc:9090",)


@pytest.mark.parametrize(("env", "complaint"), [
    ({"CRITBATCH_ALLOW_POD_TEMPLATE": "hostpath"},
     "CRITBATCH_ALLOW_POD_TEMPLATE: unknown hostpath"),
    ({"CRITBATCH_ALLOW_POD_TEMPLATE": "labels"}, "unknown labels"),
    ({"CRITBATCH_ALLOW_PROMETHEUS_URLS": "prom:9090"}, "not an http(s) URL prefix"),
    ({"CRITBATCH_ALLOW_PROMETHEUS_URLS": "http://u:p@prom:9090"}, "not an http(s) URL prefix"),
    ({"CRITBATCH_ALLOW_PROMETHEUS_URLS": "http://prom:9090/?x=1"}, "not an http(s) URL prefix"),
])
def test_misspelt_policy_settings_fail_loudly(env, complaint):
    with pytest.raises(ValueError) as exc:
        Config.from_env(env)
    assert complaint in str(exc.value)


@pytest.mark.parametrize("argv", [["--allow-pod-template", "hostpath"],
                                  ["--allow-prometheus-url", "ftp://prom"]])
def test_misspelt_policy_flags_fail_loudly(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert argv[0] in capsys.readouterr().err


class RecordingKube:
    """Enough of Kube for a reconcile that must stop at the spec: any other call fails."""

    def __init__(self) -> None:
        self.patches: list[dict] = []

    def patch_status(self, ns: str, name: str, patch: dict) -> None:
        self.patches.append(patch)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused sweep made the operator call {name}")


@pytest.mark.parametrize(("spec", "field"), [
    ({"trainer": {"podTemplate": {
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}},
     f"{TPL}.volumes[0].hostPath"),
    ({"metrics": {"prometheusURL": "http://10.0.0.1:2379"}}, "spec.metrics.prometheusURL"),
])
def test_a_refused_sweep_is_invalid_and_the_operator_does_nothing_for_it(spec, field):
    """No Job, no metrics request, no list: only the status saying why."""
    body = sweep_manifest("demo", **spec)
    body["metadata"].update(uid="u-1", generation=1)
    kube = RecordingKube()
    events: list[tuple[str, str, str]] = []
    outcome = asyncio.run(reconcile(body, kube=kube, cfg=Config(), state=SweepState(),
                                    emit=lambda *e: events.append(e)))
    assert outcome.created == [] and outcome.status["phase"] != "Running"
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith(f"{field}: not allowed by the operator's policy")
    assert [e[1] for e in events] == ["InvalidSpec"]
    assert len(kube.patches) == 1
