"""The GitOps manifests in docs/gitops/: Argo CD's Lua health check run under Lua 5.1, Flux's
health expressions under CEL, and the chart values both of them pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import celpy
import jsonschema
import pytest
import yaml

from .conftest import CHART, ROOT, documents

GITOPS = ROOT / "docs" / "gitops"
HEALTH_LUA = GITOPS / "health.lua"


def lua_literal(value) -> str:
    """A Lua table constructor for JSON-like data (how Argo CD hands `obj` to the script)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


@pytest.fixture(scope="module")
def lua() -> str:
    found = shutil.which("lua5.1")
    if not found:
        message = "lua5.1 not found: run scripts/install-test-tools.sh as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def health(lua: str, obj: dict) -> tuple[str, str]:
    driver = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = assert(loadfile({json.dumps(str(HEALTH_LUA))}))()\n"
        'io.write(hs.status, "\\t", hs.message)\n'
    )
    proc = subprocess.run(
        [lua, "-"], input=driver, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    status, _, message = proc.stdout.partition("\t")
    return status, message


def sweep(status: dict | None, generation: int = 1) -> dict:
    obj = {
        "apiVersion": "critbatch.dev/v1alpha1",
        "kind": "CriticalBatchSweep",
        "metadata": {"name": "digits", "namespace": "default", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": 2}


RUNNING = {
    "observedGeneration": 2, "phase": "Running", "progress": "3/10",
    "conditions": [cond("Ready", "False", "TrialsRunning", "7 trials left"),
                   cond("Progressing", "True", "TrialsRunning"),
                   cond("Degraded", "False", "AsExpected")],
}
DONE = {
    "observedGeneration": 2, "phase": "Succeeded", "progress": "10/10",
    "criticalBatchSize": {"measured": 64},
    "conditions": [cond("Ready", "True", "Resolved", "b* = 64 (resolved)"),
                   cond("Progressing", "False", "Done"),
                   cond("Degraded", "False", "AsExpected")],
}
UNRESOLVED = {
    "observedGeneration": 2, "phase": "Succeeded", "progress": "10/10",
    "criticalBatchSize": {"mostProbable": 64, "plausible": [32, 64], "resolved": False},
    "conditions": [cond("Ready", "False", "Unresolved", "still plausible: 32, 64"),
                   cond("Progressing", "False", "Completed"),
                   cond("Degraded", "False", "AsExpected")],
}
INVALID = {
    "observedGeneration": 2, "phase": "Invalid",
    "conditions": [cond("Ready", "False", "InvalidSpec", "spec.batchSizes[2]: above |S|"),
                   cond("Degraded", "True", "InvalidSpec", "spec.batchSizes[2]: above |S|")],
}
NO_METRICS = {
    "observedGeneration": 2, "phase": "Running", "progress": "3/10",
    "conditions": [cond("Ready", "False", "TrialsRunning"),
                   cond("Degraded", "True", "MetricsUnavailable", "Prometheus: timed out")],
}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (sweep(None), ("Progressing", "Waiting for the critbatch operator")),
        (
            sweep(RUNNING, generation=3),
            ("Progressing", "Waiting for the operator to see generation 3"),
        ),
        (sweep(RUNNING, generation=2), ("Progressing", "trials 3/10")),
        (sweep(DONE, generation=2), ("Healthy", "b* = 64 (resolved)")),
        (sweep(UNRESOLVED, generation=2), ("Degraded", "still plausible: 32, 64")),
        (sweep(INVALID, generation=2), ("Degraded", "spec.batchSizes[2]: above |S|")),
        (sweep(NO_METRICS, generation=2), ("Degraded", "Prometheus: timed out")),
        (sweep({"observedGeneration": 1, "phase": "Pending"}), ("Progressing", "trials pending")),
    ],
    ids=["new", "stale", "running", "ready", "unresolved", "invalid", "degraded",
         "no-conditions"],
)
def test_argocd_health_check(lua: str, obj: dict, expected: tuple[str, str]) -> None:
    assert health(lua, obj) == expected


def test_argocd_configmap_carries_the_health_script() -> None:
    (cm,) = documents((GITOPS / "argocd-cm.yaml").read_text())
    key = "resource.customizations.health.critbatch.dev_CriticalBatchSweep"
    assert cm["data"][key] == HEALTH_LUA.read_text()


FLUX_KUSTOMIZATIONS = [
    (path.name, doc)
    for path in sorted(GITOPS.glob("*.yaml"))
    for doc in documents(path.read_text())
    if doc["kind"] == "Kustomization" and doc["apiVersion"].startswith("kustomize.toolkit.")
]


def test_flux_waits_for_the_papers_sweeps_and_the_campaign() -> None:
    assert {name for name, _ in FLUX_KUSTOMIZATIONS} == {"flux.yaml", "flux-campaign.yaml"}


@pytest.mark.parametrize(("where", "kustomization"), FLUX_KUSTOMIZATIONS,
                         ids=[n for n, _ in FLUX_KUSTOMIZATIONS])
def test_flux_health_expressions(where: str, kustomization: dict) -> None:
    """Flux binds the object's top-level fields; the expressions tell done, failed, running."""
    assert kustomization["spec"]["wait"] is True, where
    (check,) = kustomization["spec"]["healthCheckExprs"]
    env = celpy.Environment()

    def holds(expr: str, status: dict) -> bool:
        program = env.program(env.compile(expr))
        return bool(program.evaluate({"status": celpy.json_to_cel(status)}))

    assert holds(check["current"], DONE)
    assert not holds(check["current"], RUNNING)
    assert holds(check["failed"], INVALID)
    assert holds(check["failed"], UNRESOLVED)
    assert not holds(check["current"], UNRESOLVED)
    assert not holds(check["failed"], RUNNING)
    assert not holds(check["failed"], DONE)


def chart_values_in_examples() -> list[tuple[str, dict]]:
    found = []
    for path in (GITOPS / "argocd-applications.yaml", GITOPS / "flux.yaml"):
        for doc in documents(path.read_text()):
            if doc["kind"] == "Application" and "helm" in doc["spec"]["source"]:
                found.append((path.name, doc["spec"]["source"]["helm"]["valuesObject"]))
            elif doc["kind"] == "HelmRelease":
                found.append((path.name, doc["spec"]["values"]))
    return found


def test_gitops_chart_values_match_the_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    found = chart_values_in_examples()
    assert {name for name, _ in found} == {"argocd-applications.yaml", "flux.yaml"}
    for _, values in found:
        jsonschema.validate(values, schema)


def test_gitops_paths_exist() -> None:
    checked = 0
    for path in sorted(GITOPS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc.get("spec") or {}
            rel = spec.get("path") or spec.get("source", {}).get("path")
            rel = rel or spec.get("chart", {}).get("spec", {}).get("chart")
            if rel:
                assert (ROOT / rel).is_dir(), f"{path.name}: {rel}"
                checked += 1
    # The chart (Argo CD, Flux), the paper's sweeps (Argo CD, Flux), the campaign (Argo CD, Flux).
    assert checked == 6
