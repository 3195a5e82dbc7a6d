"""The chart grants exactly the API calls the operator makes.

The operator's end-to-end harness (tests/operator/harness.py) runs the real operator (kopf)
against kmock through a whole sweep (Jobs created, pruned and deleted, an operator restart) and
a sweep on two nodes (Services created and deleted), and logs every request it made. Every
(API group, resource, verb) it used must be granted by the rendered RBAC, and every granted one
must be used, or be in ALLOWED_UNUSED with the reason the harness cannot show it.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import ROOT, by_kind, one

harness = pytest.importorskip("harness", reason="the operator's test harness is not there")

Call = tuple[str, str, str]  # (API group, resource, verb)

_PEERING = "kopf's peering with replicas > 1; the harness runs kopf with --standalone"
_NAMESPACES = (
    "kopf lists and watches namespaces when it serves named namespaces (watchNamespaces); "
    "the harness serves all namespaces"
)
ALLOWED_UNUSED: dict[Call, str] = {
    **{("kopf.dev", r, v): _PEERING
       for r in ("clusterkopfpeerings", "kopfpeerings") for v in ("list", "watch", "get", "patch")},
    ("", "namespaces", "list"): _NAMESPACES,
    ("", "namespaces", "watch"): _NAMESPACES,
}
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"),
                  ("kopf.dev", "clusterkopfpeerings")}


def granted(roles: list[dict]) -> set[Call]:
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture()
async def used_calls(kmock: Any) -> set[Call]:
    """The calls of a full sweep with a restart, plus a sweep that names a reference sweep and
    one whose trials run on two nodes."""
    harness.setup_kmock(kmock)
    result = await harness.full_sweep_scenario(kmock)
    assert result.status["phase"] == "Succeeded", result.status
    # spec.reference.sweep makes the operator read another sweep (absent here: a 404).
    before = len(harness.api_calls(kmock))
    async with harness.operator(kmock):
        body = harness.sweep_manifest("predicted", reference={"sweep": "missing-reference"})
        await harness.create_sweep(kmock, body)
        await harness.wait_for(lambda: harness.status(kmock, "predicted").get("phase"),
                               timeout=30, what="the second sweep's status")
    calls = harness.api_calls(kmock)
    assert ("get", "critbatch.dev", "criticalbatchsweeps") in calls[before:]
    # spec.trainer.nodes > 1 gives each trial a Service, deleted with a pruned trial's Job: b = 2
    # reaches at once, so b = 64 (slow, paced by samples) is pruned while it runs.
    before = len(calls)
    pace = harness.Behaviour(samples_per_second=4000.0, steps_per_second_at={2: 40_000.0})
    async with harness.FakeCluster(kmock, pace), harness.operator(kmock):
        body = harness.sweep_manifest("spread", batchSizes=[2, 64], seeds=1, parallelism=2,
                                      trainer={"nodes": 2})
        await harness.create_sweep(kmock, body)
        await harness.wait_for(harness.phase_is(kmock, "spread", "Succeeded", "Failed"),
                               timeout=30, what="the sweep on two nodes")
    calls = harness.api_calls(kmock)
    assert {("create", "", "services"), ("delete", "", "services")} <= set(calls[before:])
    return {(group, resource, verb) for verb, group, resource in calls}


async def test_every_call_is_granted_and_every_grant_is_used(
    used_calls: set[Call], default_objects, full_objects, namespaced_objects
) -> None:
    assert {("batch", "jobs", "create"), ("batch", "jobs", "delete")} <= used_calls

    # All namespaces: one ClusterRole (with peering in the full values).
    cluster_role = granted([one(default_objects, "ClusterRole")])
    assert used_calls - cluster_role == set(), "used but not granted"
    unused = granted([one(full_objects, "ClusterRole")]) - used_calls
    assert unused <= set(ALLOWED_UNUSED), f"granted but never used: {unused - set(ALLOWED_UNUSED)}"

    # watchNamespaces: namespaced calls through each Role, cluster-scoped ones through the
    # read-only discovery ClusterRole.
    discovery = granted(by_kind(namespaced_objects, "ClusterRole"))
    for role in by_kind(namespaced_objects, "Role"):
        rules = granted([role])
        for call in used_calls:
            scope = discovery if call[:2] in CLUSTER_SCOPED else rules
            assert call in scope, f"{call} not granted in {role['metadata']['namespace']}"
    unused = (discovery | granted(by_kind(namespaced_objects, "Role"))) - used_calls
    assert unused <= set(ALLOWED_UNUSED), f"granted but never used: {unused - set(ALLOWED_UNUSED)}"


def test_allowed_unused_grants_are_rendered(full_objects, namespaced_objects) -> None:
    """Each allowlist entry is in some rendered role: no stale excuses."""
    rendered = granted(by_kind(full_objects, "ClusterRole"))
    rendered |= granted(by_kind(namespaced_objects, "ClusterRole") + by_kind(namespaced_objects,
                                                                              "Role"))
    assert set(ALLOWED_UNUSED) <= rendered
    assert all(len(reason.split()) > 5 for reason in ALLOWED_UNUSED.values())


def test_rbac_documentation_matches(default_objects) -> None:
    """docs/operator.md's RBAC table names what the chart grants."""
    doc = (ROOT / "docs" / "operator.md").read_text()
    for group, resource, _verb in granted([one(default_objects, "ClusterRole")]):
        assert f"`{resource}`" in doc, resource
        assert f"`{group}`" in doc or group == ""
