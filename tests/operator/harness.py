"""A reusable end-to-end harness: the operator (kopf) against kmock, with the fakes of
fakes.py playing the cluster, the trainers and Prometheus.

The harness marks its few HTTP requests (creating, patching, deleting sweeps) with a header,
so `api_calls` lists only what the operator did: the RBAC rules of the Helm chart can be
checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import kmock as kmock_lib
import kopf
import pytest
from fakes import JOBS, NS, Behaviour, FakeCluster, FakePrometheus, expected_measured
from kopf.testing import KopfRunner
from sweeps import sweep_manifest

from critbatch.clock import utc_now
from critbatch_operator.config import Config
from critbatch_operator.handlers import register

HARNESS_HEADER = "X-Critbatch-Harness"

SWEEPS = kmock_lib.resource("critbatch.dev", "v1alpha1", "criticalbatchsweeps")
EVENTS = kmock_lib.resource("", "v1", "events")
SWEEPS_PATH = f"/apis/critbatch.dev/v1alpha1/namespaces/{NS}/criticalbatchsweeps"


# ---------------------------------------------------------------------------------------------
# kmock setup and the request log
# ---------------------------------------------------------------------------------------------


class Emulator(kmock_lib.KubernetesEmulator):
    """kmock plus the API server's `metadata.generateName` (kopf names its Events so)."""

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock_lib.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
        return await super()._handle(request)


def setup_kmock(k: Any) -> None:
    """Built-in kinds plus the CriticalBatchSweep resource with its status subresource."""
    k.resources.load_bundled()
    k.resources[SWEEPS] = kmock_lib.ResourceInfo(
        kind="CriticalBatchSweep", singular="criticalbatchsweep", namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames={"cbs"}, categories={"critbatch"}, subresources={"status"})


@pytest.fixture()
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """kmock's options with our emulator class (it understands generateName)."""
    return {**kmock_options, "cls": Emulator}


@pytest.fixture()
def k(kmock: Any) -> Any:
    """kmock serving the built-in kinds and the CriticalBatchSweep resource."""
    setup_kmock(kmock)
    return kmock


def _verb(req: Any) -> str:
    method = str(req.method.value if hasattr(req.method, "value") else req.method).upper()
    if method == "GET":
        if req.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if req.name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower())


def api_calls(k: Any) -> list[tuple[str, str, str]]:
    """(verb, API group, resource[/subresource]) of every resource request the operator made

    (discovery requests, which RBAC does not gate by resource, are left out)."""
    out = []
    for req in list(k):
        if req.headers.get(HARNESS_HEADER) or req.resource is None or not req.resource.plural:
            continue
        plural = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
        out.append((_verb(req), req.resource.group or "", plural))
    return out


# What docs/operator.md grants the operator: (verb, API group, resource). The Helm chart's Role
# must allow at least these; the end-to-end tests check the operator needs no more.
OPERATOR_RBAC = frozenset({
    ("get", "critbatch.dev", "criticalbatchsweeps"),
    ("list", "critbatch.dev", "criticalbatchsweeps"),
    ("watch", "critbatch.dev", "criticalbatchsweeps"),
    ("patch", "critbatch.dev", "criticalbatchsweeps"),
    ("patch", "critbatch.dev", "criticalbatchsweeps/status"),
    ("list", "batch", "jobs"),
    ("create", "batch", "jobs"),
    ("delete", "batch", "jobs"),
    ("list", "", "pods"),
    ("create", "", "services"),
    ("delete", "", "services"),
    ("create", "", "events"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
})


def posted_events(k: Any) -> list[tuple[str, str, str]]:
    """(type, reason, message) of every Event the operator POSTed."""
    out = []
    for req in list(k):
        if req.resource == EVENTS and _verb(req) == "create" and isinstance(req.data, dict):
            out.append((req.data.get("type"), req.data.get("reason"), req.data.get("message")))
    return out


# ---------------------------------------------------------------------------------------------
# The operator and the sweeps
# ---------------------------------------------------------------------------------------------


def stored(body: dict) -> dict:
    """What an API server would store: uid, resourceVersion, generation, timestamps."""
    body = copy.deepcopy(body)
    meta = body.setdefault("metadata", {})
    meta.setdefault("namespace", NS)
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("resourceVersion", "1")
    meta.setdefault("generation", 1)
    meta.setdefault("creationTimestamp", utc_now())
    return body


async def create_sweep(k: Any, body: dict) -> dict:
    body = stored(body)
    async with k.post(SWEEPS_PATH, json=body, headers={HARNESS_HEADER: "1"}) as resp:
        assert resp.status < 300, await resp.text()
    return body


async def patch_spec(k: Any, name: str, spec: dict) -> None:
    """A spec change as the API server stores it: generation goes up."""
    gen = int(k.objects[SWEEPS, NS, name]["metadata"].get("generation", 1)) + 1
    patch = {"metadata": {"generation": gen, "resourceVersion": str(gen)}, "spec": spec}
    async with k.patch(f"{SWEEPS_PATH}/{name}", json=patch,
                       headers={HARNESS_HEADER: "1"}) as resp:
        assert resp.status < 300, await resp.text()


async def delete_sweep(k: Any, name: str) -> None:
    async with k.delete(f"{SWEEPS_PATH}/{name}", headers={HARNESS_HEADER: "1"}) as resp:
        assert resp.status < 300, await resp.text()


def sweep_object(k: Any, name: str) -> dict:
    return k.objects[SWEEPS, NS, name].raw


def status(k: Any, name: str) -> dict:
    return sweep_object(k, name).get("status") or {}


def job_posts(k: Any, since: int = 0) -> list[str]:
    """Names of the Jobs the operator POSTed (every attempt, including 409s)."""
    out = []
    for i, req in enumerate(list(k)):
        if i >= since and req.resource == JOBS and _verb(req) == "create" and not req.headers.get(
                HARNESS_HEADER):
            out.append((req.data or {}).get("metadata", {}).get("name"))
    return out


@contextlib.asynccontextmanager
async def operator(k: Any, cfg: Config | None = None, **overrides: Any) -> AsyncIterator[Any]:
    """Run the operator (a kopf CLI in a thread) against kmock until the block ends."""
    cfg = replace(cfg or Config(reconcile_interval=0.2, metrics_timeout=1.0, max_backoff=1.0),
                  kube_server=str(k.url).rstrip("/"), **overrides)
    registry = kopf.OperatorRegistry()
    register(registry, cfg)
    watches = len(list(k[kmock_lib.action.WATCH, SWEEPS]))
    runner = KopfRunner(["run", "-A", "--standalone"], registry=registry, timeout=30)
    await asyncio.to_thread(runner.__enter__)
    try:
        await wait_for(lambda: len(list(k[kmock_lib.action.WATCH, SWEEPS])) > watches,
                       timeout=15, what="kopf's watch on sweeps")
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)


async def wait_for(check: Callable[[], Any], *, timeout: float = 20, what: str = "condition",
                   interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def phase_is(k: Any, name: str, *phases: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return status(k, name).get("phase") in phases
        except (KeyError, ValueError):
            return False
    return check


@dataclass
class ScenarioResult:
    """What a full sweep with an operator restart left behind, for assertions."""

    status: dict
    posts: list[str]
    calls: list[tuple[str, str, str]]
    jobs: dict[str, dict]
    events: list[tuple[str, str, str]]
    expected_measured: int
    sweep: dict


async def full_sweep_scenario(k: Any, *, batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64),
                              seeds: int = 2, parallelism: int = 4, max_steps: int = 4000,
                              source: str = "direct", restart_after: int = 4,
                              trials_per_gpu: int = 1,
                              strategy: dict | None = None) -> ScenarioResult:
    """Create a sweep, restart the operator after `restart_after` trials are done, run it to
    the end. Needs `setup_kmock(k)` first."""
    body = sweep_manifest("demo", batchSizes=list(batch_sizes), seeds=seeds,
                          parallelism=parallelism, trialsPerGPU=trials_per_gpu,
                          target={"fidThreshold": 50, "maxSteps": max_steps, "evalEvery": 10},
                          **({"strategy": strategy} if strategy else {}))
    # b = 2 finishes first and b = 4 next (both reach, so the fit has two points whatever the
    # timing); paced by samples, b = 8 and 16 pass their SFO bound seconds before they would
    # finish, so the operator (reconciling every 0.2 s) surely stops some running trial.
    pace = Behaviour(samples_per_second=4000.0, steps_per_second_at={2: 40_000.0, 4: 4000.0})
    async with FakeCluster(k, pace) as cluster:
        prom = FakePrometheus(cluster)
        overrides = {"prometheus_url": prom.url} if source == "prometheus" else {}
        try:
            async with operator(k, **overrides):
                await create_sweep(k, body)
                await wait_for(lambda: status(k, "demo").get("trialsDone", 0) >= restart_after,
                               timeout=30, what=f"{restart_after} trials done")
            # The operator is down for a while; trials go on finishing.
            await asyncio.sleep(0.5)
            async with operator(k, **overrides):
                await wait_for(phase_is(k, "demo", "Succeeded", "Failed"), timeout=60,
                               what="the sweep to finish")
                await wait_for(lambda: any(r.startswith("CriticalBatchSize")
                                           for _, r, _ in posted_events(k)),
                               timeout=10, what="the final Event")
        finally:
            prom.close()
    return ScenarioResult(
        status=status(k, "demo"),
        posts=job_posts(k),
        calls=api_calls(k),
        jobs=cluster.jobs(),
        events=posted_events(k),
        expected_measured=expected_measured(batch_sizes, seeds, max_steps),
        sweep=sweep_object(k, "demo"),
    )
