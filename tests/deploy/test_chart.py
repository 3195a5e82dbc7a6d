"""The Helm chart: lint, render, validate and the behaviour its values promise."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from pod_security import restricted_violations

from critbatch.spec import POD_TEMPLATE_ALLOWANCES
from critbatch_operator.config import Config

from .conftest import (
    CHART,
    FULL_VALUES,
    NAMESPACED_VALUES,
    ROOT,
    by_kind,
    documents,
    find_tool,
    one,
    render,
    run,
)

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion: the CRD's CEL rules use
# fieldPath and reason, new in 1.28) and the newest kubernetes-validate knows.
_KUBE_RANGE = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
MIN_KUBE = _KUBE_RANGE.strip(">=").split("-")[0]
VALUES = {"default": (), "full": (FULL_VALUES,), "namespaced": (NAMESPACED_VALUES,)}
# Kinds that kubernetes-validate has no schema for; test_custom_resources_structure checks them.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "ClusterKopfPeering", "KopfPeering"}


def env_of(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("values", sorted(VALUES))
@pytest.mark.parametrize("tool", ["helm", "helm3"])
def test_helm_lint_strict(tool: str, values: str) -> None:
    """The chart lints clean under Helm 4 and Helm 3, whatever the values."""
    helm = find_tool(tool)
    args = [helm, "lint", "--strict", str(CHART)]
    for f in VALUES[values]:
        args += ["--values", str(f)]
    out = run(args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("kube_version", [MIN_KUBE, "1.37.0"])
@pytest.mark.parametrize("values", sorted(VALUES))
def test_rendered_chart_is_valid_kubernetes(helm: str, values: str, kube_version: str) -> None:
    """Every rendered object, CRDs included, passes strict schema validation (no unknown field).

    kubernetes-validate passes over kinds it has no schema for: only the chart's custom
    resources may be among them.
    """
    manifest = render(helm, *VALUES[values], include_crds=True)
    validator = find_tool("kubernetes-validate")
    proc = subprocess.run(
        [validator, "--strict", "-k", kube_version, "-"],
        input=manifest, capture_output=True, text=True, timeout=120, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output
    passed_over = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert passed_over <= CUSTOM_KINDS, output
    kinds = {o["kind"] for o in documents(manifest)}
    assert kinds - CUSTOM_KINDS, "nothing was validated"


@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm3_and_helm4_render_the_same(helm: str, helm3: str, values: str) -> None:
    assert documents(render(helm3, *VALUES[values])) == documents(render(helm, *VALUES[values]))


def test_rendered_object_counts(default_objects, full_objects, namespaced_objects) -> None:
    """What each set of values installs (the numbers the README states)."""

    def count(objects: list[dict]) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for o in objects:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        return kinds

    assert count(default_objects) == {
        "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 1,
        "Deployment": 1, "NetworkPolicy": 1,
    }
    assert count(full_objects) == {
        "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 1,
        "Deployment": 1, "ClusterKopfPeering": 1, "PodDisruptionBudget": 1, "ServiceMonitor": 1,
        "PodMonitor": 1, "ConfigMap": 1, "NetworkPolicy": 1,
    }
    assert count(namespaced_objects) == {
        "ServiceAccount": 1, "Role": 2, "RoleBinding": 2, "ClusterRole": 1,
        "ClusterRoleBinding": 1, "Service": 1, "Deployment": 1, "KopfPeering": 2,
        "PodDisruptionBudget": 1, "PodMonitor": 1, "NetworkPolicy": 1,
    }


# Enough of the Prometheus Operator's schemas to catch a misplaced or mistyped field.
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "relabelings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "sourceLabels": {"type": "array", "items": {"type": "string"}},
                    "targetLabel": {"type": "string"},
                    "action": {"type": "string"},
                    "regex": {"type": "string"},
                    "replacement": {"type": "string"},
                },
            },
        },
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
}


def _monitor_schema(kind: str, endpoints: str) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object",
                "required": ["selector", endpoints],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": _NAMESPACE_SELECTOR,
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


def test_custom_resources_structure(full_objects, namespaced_objects) -> None:
    """The custom resources kubernetes-validate passes over, checked against their schemas."""
    kopf_crds = {
        d["spec"]["names"]["kind"]: d
        for d in documents((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())
    }
    schemas = {
        "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints"),
        "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
    }
    seen = set()
    for obj in full_objects + namespaced_objects:
        kind = obj["kind"]
        if kind in schemas:
            jsonschema.validate(obj, schemas[kind])
        elif kind in kopf_crds:
            crd = kopf_crds[kind]
            assert obj["apiVersion"] == f"{crd['spec']['group']}/v1"
            assert ("namespace" in obj["metadata"]) == (crd["spec"]["scope"] == "Namespaced")
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            jsonschema.validate(obj, schema)
        else:
            continue
        seen.add(kind)
    assert seen == CUSTOM_KINDS


def test_chart_crds_are_the_top_level_crds() -> None:
    """charts/critbatch/crds/ carries crds/ unchanged (scripts/sync-crds.sh copies them)."""
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "no CRD in crds/"
    for name, content in top.items():
        assert chart.get(name) == content, f"charts/critbatch/crds/{name} differs from crds/{name}"
    # The chart adds only kopf's peering resources, which the operator needs for replicas > 1.
    assert set(chart) - set(top) == {"kopf.dev_peerings.yaml"}


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.replicass=2", "replicass"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("prometheusURL=prometheus:9090", "prometheusURL"),
        ("image.operator.digest=latest", "digest"),
        ("operator.logLevel=verbose", "logLevel"),
        ("sweepPolicy.allowPodTemplate={hostpath}", "allowPodTemplate"),
        ("sweepPolicy.allowPodTemplate={labels}", "allowPodTemplate"),
        ("sweepPolicy.allowPrometheusURLs={prometheus:9090}", "allowPrometheusURLs"),
        ("sweepPolicy.allowPrometheusURLs={http://u@prom:9090}", "allowPrometheusURLs"),
        ("sweepPolicy.allowAll=true", "allowAll"),
    ],
)
def test_values_schema_rejects_mistakes(helm: str, setting: str, complaint: str) -> None:
    proc = subprocess.run(
        [helm, "template", "cb", str(CHART), "--set", setting],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_operator_pod_is_locked_down(default_objects) -> None:
    """Non-root, read-only, no privilege escalation, no capabilities, bounded resources."""
    deployment = one(default_objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert pod["serviceAccountName"] == one(default_objects, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("values", sorted(VALUES))
def test_operator_pod_passes_pod_security_restricted(helm: str, values: str) -> None:
    """The operator's namespace may enforce `pod-security.kubernetes.io/enforce: restricted`."""
    deployment = one(documents(render(helm, *VALUES[values])), "Deployment")
    assert restricted_violations(deployment["spec"]["template"]) == []


def test_probes_use_the_health_endpoint(default_objects) -> None:
    deployment = one(default_objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = env_of(deployment)
    assert int(env["CRITBATCH_HEALTH_PORT"]) == ports["health"]
    assert int(env["CRITBATCH_METRICS_PORT"]) == ports["metrics"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_environment(default_objects, full_objects) -> None:
    """The operator learns its trainer image, Prometheus and namespaces from the chart."""
    env = env_of(one(default_objects, "Deployment"))
    assert env["CRITBATCH_TRAINER_IMAGE"] == "critbatch-trainer:0.1.0"
    assert env["CRITBATCH_NAMESPACES"] == ""
    assert env["CRITBATCH_PROMETHEUS_URL"] == ""
    assert env["CRITBATCH_TRAINER_METRICS_PORT"] == "9100"
    # The sweep policy's defaults: nothing beyond what cannot widen a sweep author's access.
    assert env["CRITBATCH_ALLOW_POD_TEMPLATE"] == ""
    assert env["CRITBATCH_ALLOW_PROMETHEUS_URLS"] == ""

    full = one(full_objects, "Deployment")
    env = env_of(full)
    trainer = "registry.example.com/ml/critbatch-trainer:0.1.0-cuda12.6"
    assert env["CRITBATCH_TRAINER_IMAGE"] == trainer
    assert env["CRITBATCH_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert env["CRITBATCH_ALLOW_POD_TEMPLATE"] == "priorityClassName,nfs"
    assert env["CRITBATCH_ALLOW_PROMETHEUS_URLS"] == "https://thanos.example.com/prometheus/"
    # The operator reads them as the chart writes them.
    cfg = Config.from_env({k: v for k, v in env.items() if v is not None})
    assert cfg.allow_pod_template == {"priorityClassName", "nfs"}
    assert cfg.allow_prometheus_urls == ("https://thanos.example.com/prometheus/",)
    (container,) = full["spec"]["template"]["spec"]["containers"]
    # A digest wins over the tag: the image cannot change under the same reference.
    assert container["image"] == (
        "registry.example.com/ml/critbatch-operator@sha256:" + "0" * 64
    )


def test_one_replica_runs_standalone(default_objects) -> None:
    deployment = one(default_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "args" not in container  # critbatch-operator's default: standalone
    assert not by_kind(default_objects, "ClusterKopfPeering")
    assert not by_kind(default_objects, "PodDisruptionBudget")
    assert not any(g == "kopf.dev" for g, _, _ in rules_of(one(default_objects, "ClusterRole")))


def test_replicas_peer_and_stand_by(full_objects) -> None:
    """With replicas > 1 every pod joins one kopf peering; the chart creates it and grants it."""
    deployment = one(full_objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    peering = one(full_objects, "ClusterKopfPeering")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--peering={peering['metadata']['name']}" in container["args"]
    rules = rules_of(one(full_objects, "ClusterRole"))
    verbs = ("list", "watch", "get", "patch")
    assert {("kopf.dev", "clusterkopfpeerings", v) for v in verbs} <= rules
    pdb = one(full_objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_watch_namespaces_grants_only_those_namespaces(namespaced_objects) -> None:
    """With watchNamespaces, sweeps, Jobs and pods are reachable only in those namespaces."""
    env = env_of(one(namespaced_objects, "Deployment"))
    assert env["CRITBATCH_NAMESPACES"] == "team-a,team-b"
    roles = by_kind(namespaced_objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        rules = rules_of(role)
        assert ("batch", "jobs", "create") in rules
        assert ("kopf.dev", "kopfpeerings", "patch") in rules
    bindings = by_kind(namespaced_objects, "RoleBinding")
    sa = one(namespaced_objects, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    # What stays cluster-wide is read-only discovery for kopf.
    cluster = rules_of(one(namespaced_objects, "ClusterRole"))
    assert cluster == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    peerings = by_kind(namespaced_objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    monitor = one(namespaced_objects, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_no_cluster_role_without_discovery(helm: str) -> None:
    objects = documents(
        render(helm, NAMESPACED_VALUES, sets=("rbac.clusterDiscovery=false",))
    )
    assert not by_kind(objects, "ClusterRole")
    assert not by_kind(objects, "ClusterRoleBinding")


def test_metrics_service_and_monitors_select_the_right_pods(full_objects) -> None:
    deployment = one(full_objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(full_objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(full_objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pods = one(full_objects, "PodMonitor")
    # The operator's labels on trial pods (docs/operator.md), and the trainer's port name.
    assert pods["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "critbatch"}
    assert pods["spec"]["namespaceSelector"] == {"any": True}
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # Of a trial on several nodes, only the pod of index 0 (rank 0) serves metrics.
    keep = pods["spec"]["podMetricsEndpoints"][0]["relabelings"][0]
    assert keep == {"sourceLabels": [
        "__meta_kubernetes_pod_annotation_batch_kubernetes_io_job_completion_index"],
        "regex": "|0", "action": "keep"}


def test_network_policy_allows_only_what_the_operator_needs(full_objects) -> None:
    policy = one(full_objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    # Only Prometheus' pods in the monitoring namespace: one peer, both selectors.
    assert ingress["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {
        (53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (9090, "TCP"), (9100, "TCP")
    }
    api_rule = next(r for r in policy["egress"] if {"port": 6443, "protocol": "TCP"} in r["ports"])
    assert [b["ipBlock"]["cidr"] for b in api_rule["to"]] == ["10.96.0.1/32", "192.168.0.0/24"]


def test_network_policy_is_on_by_default(default_objects) -> None:
    """The operator's metrics name every tenant's sweeps: by default only the monitoring
    namespace may read them, and the operator reaches no Prometheus port but the configured."""
    policy = one(default_objects, "NetworkPolicy")["spec"]
    selector = one(default_objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    (ingress,) = policy["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    prometheus = next(r for r in policy["egress"] if "to" not in r
                      and {"port": 9090, "protocol": "TCP"} in r["ports"])
    assert prometheus["ports"] == [{"port": 9090, "protocol": "TCP"}]


@pytest.mark.parametrize(("sets", "ports"), [
    (("prometheusURL=http://prom.monitoring.svc",), [9090, 80]),
    (("prometheusURL=https://prom.example.com/api",), [9090, 443]),
    (("prometheusURL=http://prom.monitoring.svc:9090",
      "sweepPolicy.allowPrometheusURLs={http://a.svc:8080/x,https://b.example.com:8443}"),
     [9090, 8080, 8443]),
])
def test_network_policy_lets_the_operator_reach_the_prometheus_urls_it_may_query(
    helm: str, sets: tuple[str, ...], ports: list[int],
) -> None:
    objects = documents(render(helm, sets=sets))
    policy = one(objects, "NetworkPolicy")["spec"]
    rule = next(r for r in policy["egress"] if "to" not in r
                and {"port": 9090, "protocol": "TCP"} in r["ports"])
    assert [p["port"] for p in rule["ports"]] == ports


def test_network_policy_can_be_switched_off(helm: str) -> None:
    objects = documents(render(helm, sets=("networkPolicy.enabled=false",)))
    assert not by_kind(objects, "NetworkPolicy")


def test_sweep_policy_values_name_what_the_operator_knows() -> None:
    """The schema's names are the operator's (a name it does not know would stop it)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    policy = schema["properties"]["sweepPolicy"]["properties"]
    assert policy["allowPodTemplate"]["items"]["enum"] == list(POD_TEMPLATE_ALLOWANCES)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["sweepPolicy"] == {"allowPodTemplate": [], "allowPrometheusURLs": []}
    assert values["networkPolicy"]["enabled"] is True


def test_dashboard_configmap(full_objects) -> None:
    """The dashboard loads as JSON and shows b*, SFO and progress from known metrics only."""
    cm = one(full_objects, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["critbatch.json"])
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for topic in ("Critical batch size b*", "SFO", "progress"):
        assert topic in titles
    contracts = (ROOT / "docs" / "contracts.md").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for metric in set(re.findall(r"critbatch_trainer_\w+", " ".join(exprs))):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        assert f"`{base}`" in contracts, f"{metric} is not a trainer metric in docs/contracts.md"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_notes_tell_how_to_apply_an_example_and_watch(helm: str) -> None:
    out = run([helm, "install", "cb", str(CHART), "--dry-run=client", "-f", str(NAMESPACED_VALUES)])
    notes = out[out.index("NOTES:"):]
    assert "kubectl apply -n team-a -f examples/digits.yaml" in notes
    assert "kubectl get cbs" in notes
    assert Path(ROOT / "examples" / "digits.yaml").is_file()
    assert "team-a,team-b" in notes


def test_values_file_is_covered_by_the_schema() -> None:
    """values.yaml itself satisfies values.schema.json, and the schema allows no stray key."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**values, "replicas": 2}, schema)


def test_packaged_chart_holds_crds_and_dashboard_only(helm: str, tmp_path: Path) -> None:
    """`helm package` ships the CRDs, templates and dashboard, and leaves the CI values out."""
    run([helm, "package", str(CHART), "--destination", str(tmp_path)])
    (archive,) = tmp_path.glob("critbatch-*.tgz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames()}
    assert {"Chart.yaml", "values.yaml", "values.schema.json", "templates/NOTES.txt",
            "crds/critbatch.dev_criticalbatchsweeps.yaml", "crds/kopf.dev_peerings.yaml",
            "dashboards/critbatch.json"} <= names
    assert not any(n.startswith("ci/") for n in names)
