"""A reusable end-to-end harness: the operator (kopf) against kmock, with fake trainers.

kmock emulates the Kubernetes API but runs no controllers, so `FakeCluster` plays the Job
controller and the kubelet: for every Job the operator creates it starts a pod whose trainer is
a real HTTP server (prometheus_client) serving the trainer's metric names, advances its steps
with wall time along a known N(b), and finishes the pod with the trainer's result JSON as its
termination message. `FakePrometheus` answers PromQL instant queries over HTTP from the same
trainers. The harness edits Jobs and pods in kmock's memory (no HTTP), and marks its few HTTP
requests (creating, patching, deleting sweeps) with a header, so `api_calls` lists only what
the operator did: the RBAC rules of the Helm chart can be checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http.server
import json
import math
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kmock as kmock_lib
import kopf
import yaml
from kopf.testing import KopfRunner
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from critbatch_operator.config import Config
from critbatch_operator.handlers import register

HERE = Path(__file__).parent
SWEEP_FILE = HERE / "sweep.yaml"
NS = "default"
HARNESS_HEADER = "X-Critbatch-Harness"

SWEEPS = kmock_lib.resource("critbatch.dev", "v1alpha1", "criticalbatchsweeps")
JOBS = kmock_lib.resource("batch", "v1", "jobs")
PODS = kmock_lib.resource("", "v1", "pods")
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
# Trainers, the cluster and Prometheus, faked
# ---------------------------------------------------------------------------------------------


def model_steps(batch_size: int, seed: int, a: float = 500.0, b: float = 1.5,
                eval_every: int = 10) -> float:
    """N(b) = A*b/(b - B) (b* = 2B = 3 on a continuum), a 2% spread per seed, rounded up to an
    evaluation; infinite where b <= B (the target is out of reach)."""
    if batch_size <= b:
        return math.inf
    n = a * batch_size / (batch_size - b) * (1 + 0.02 * seed)
    return math.ceil(n / eval_every) * eval_every


def expected_measured(grid: Iterable[int], seeds: int, max_steps: int) -> int:
    """The argmin of mean SFO over batch sizes whose seeds all reach within the budget."""
    best = None
    for bs in grid:
        steps = [model_steps(bs, s) for s in range(seeds)]
        if all(n <= max_steps for n in steps):
            sfo = bs * sum(steps) / seeds
            if best is None or (sfo, bs) < best:
                best = (sfo, bs)
    assert best is not None
    return best[1]


class FakeTrainer:
    """One trial's trainer state, with the trainer's metric names (served by its FakePod)."""

    def __init__(self, sweep: str, batch_size: int, seed: int, n: float, max_steps: int,
                 threshold: float = 50.0) -> None:
        self.sweep, self.batch_size, self.seed = sweep, batch_size, seed
        self.n, self.max_steps, self.threshold = n, max_steps, threshold
        self.step = 0.0
        self.fid = 400.0
        self.reached = False
        self.finished = False

    def advance(self, step: float) -> None:
        if self.finished:
            return
        target = min(self.n, self.max_steps)
        self.step = float(min(step, target))
        self.fid = self.threshold + (400.0 - self.threshold) * max(0.0, 1 - self.step / self.n)
        if self.step >= self.n:
            self.reached, self.finished = True, True
            self.fid = self.threshold * 0.98
        elif self.step >= self.max_steps:
            self.finished = True

    def result(self) -> dict:
        steps = int(self.n if self.reached else self.step)
        return {"sweep": self.sweep, "batch_size": self.batch_size, "seed": self.seed,
                "reached": self.reached, "steps": steps, "interpolated_steps": None,
                "sfo": steps * self.batch_size, "fid": self.fid, "threshold": self.threshold,
                "max_steps": self.max_steps, "wall_seconds": 1.0, "generator_params": 3_576_704,
                "dataset_size": 1797}

    def values(self) -> dict[str, float]:
        """The trainer's gauges by metric name suffix."""
        out = {"step": self.step, "fid": self.fid, "reached": float(self.reached),
               "finished": float(self.finished), "max_steps": float(self.max_steps)}
        if self.reached:
            out["steps_to_threshold"] = self.n
        return out

    def samples(self) -> list[tuple[dict, float]]:
        """What Prometheus would hold for this trainer (name and labels, value)."""
        base = {"sweep": self.sweep, "batch_size": str(self.batch_size), "seed": str(self.seed),
                "namespace": NS, "pod": f"pod-{self.batch_size}-{self.seed}"}
        return [({**base, "__name__": f"critbatch_trainer_{name}"}, value)
                for name, value in self.values().items()]


class FakePod:
    """A pod's trainers (one, or a Job's several trials) behind one real /metrics endpoint."""

    def __init__(self, trainers: list[FakeTrainer]) -> None:
        self.trainers = trainers
        registry = CollectorRegistry()
        registry.register(self)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.port = self.server.server_port

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for t in self.trainers:
            for name, value in t.values().items():
                family = families.setdefault(name, GaugeMetricFamily(
                    f"critbatch_trainer_{name}", name, labels=["sweep", "batch_size", "seed"]))
                family.add_metric([t.sweep, str(t.batch_size), str(t.seed)], value)
        yield from families.values()

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.trainers)

    def message(self, corrupt: set[tuple[int, int]]) -> str:
        """The termination message: one result line per trial."""
        lines = []
        for t in self.trainers:
            result = t.result()
            if (t.batch_size, t.seed) in corrupt:
                result["steps"] += 7
            lines.append(json.dumps(result))
        return "\n".join(lines)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Behaviour:
    """How the fake cluster treats trials: speed, linger, and scripted pod failures."""

    steps_per_second: float = 2500.0
    # When set, a step costs b samples as on real hardware: steps/s = samples_per_second / b.
    # Big batches then run long enough past their SFO bound for pruning to catch them.
    samples_per_second: float | None = None
    # Steps per second for these batch sizes, whatever the pacing above.
    steps_per_second_at: dict[int, float] = field(default_factory=dict)
    linger: float = 0.3
    failures: dict[tuple[int, int], int] = field(default_factory=dict)  # (b, seed) -> crashes
    steps: Callable[[int, int], float] = model_steps
    corrupt_messages: set[tuple[int, int]] = field(default_factory=set)

    def rate(self, batch_size: int) -> float:
        """Steps per second of a trial at this batch size."""
        if batch_size in self.steps_per_second_at:
            return self.steps_per_second_at[batch_size]
        if self.samples_per_second is None:
            return self.steps_per_second
        return self.samples_per_second / batch_size


class FakeCluster:
    """Plays the Job controller and the kubelet for the Jobs in kmock (no HTTP)."""

    def __init__(self, k: Any, behaviour: Behaviour | None = None) -> None:
        self.k = k
        self.behaviour = behaviour or Behaviour()
        self.pods: dict[str, FakePod] = {}  # by Job name
        self.started: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def jobs(self) -> dict[str, dict]:
        out = {}
        for (res, _ns, name), obj in list(self.k.objects.items()):
            if res == JOBS and not obj.deleted:
                out[name] = obj.raw
        return out

    def live_trainers(self) -> list[FakeTrainer]:
        return [t for pod in list(self.pods.values()) for t in pod.trainers]

    async def __aenter__(self) -> FakeCluster:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pod in self.pods.values():
            pod.close()
        self.pods.clear()

    async def _loop(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(0.05)

    def _pod_name(self, job: str) -> str:
        return f"{job}-{self.attempts.get(job, 0)}"

    def tick(self) -> None:
        now = time.monotonic()
        jobs = self.jobs()
        for name in list(self.pods):
            if name not in jobs:  # the Job was deleted: its pod goes too (background propagation)
                self.pods.pop(name).close()
                with contextlib.suppress(KeyError, ValueError):
                    self.k.objects[PODS, NS, self._pod_name(name)].delete()
        for name, job in jobs.items():
            conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or []}
            if conds & {"Complete", "Failed"} or (job.get("spec") or {}).get("suspend"):
                continue
            if name not in self.pods:
                self._start(name, job, now)
                continue
            self._progress(name, job, now)

    def _start(self, name: str, job: dict, now: float) -> None:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if "--trials" in args:
            pairs = args[args.index("--trials") + 1].split(",")
            keys = [tuple(map(int, pair.split(":"))) for pair in pairs]
        else:
            keys = [(int(args[args.index("--batch-size") + 1]),
                     int(args[args.index("--seed") + 1]))]
        max_steps = int(args[args.index("--max-steps") + 1])
        sweep = args[args.index("--sweep") + 1]
        threshold = float(args[args.index("--fid-threshold") + 1])
        fake = FakePod([FakeTrainer(sweep, b, s, self.behaviour.steps(b, s), max_steps,
                                    threshold) for b, s in keys])
        self.pods[name] = fake
        self.started[name] = now
        job_uid = (job.get("metadata") or {}).get("uid")
        if not job_uid:  # kmock assigns none; the API server would have
            job_uid = str(uuid.uuid4())
            self.k.objects[JOBS, NS, name].patch({"metadata": {"uid": job_uid}})
        pod = copy.deepcopy(job["spec"]["template"])
        container = pod["spec"]["containers"][0]
        container["ports"] = [{"name": "metrics", "containerPort": fake.port}]
        pod.update({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {**pod["metadata"], "name": self._pod_name(name), "namespace": NS,
                         "uid": str(uuid.uuid4()), "resourceVersion": "1",
                         "creationTimestamp": _ts(),
                         "labels": {**pod["metadata"]["labels"], "job-name": name},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": name, "uid": job_uid,
                                              "controller": True,
                                              "blockOwnerDeletion": True}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "containerStatuses": [{"name": "trainer", "ready": True,
                                              "restartCount": 0,
                                              "state": {"running": {"startedAt": _ts()}}}]},
        })
        self.k.objects[PODS, NS, pod["metadata"]["name"]] = pod
        self.k.objects[JOBS, NS, name].patch({"status": {"active": 1, "startTime": _ts()}})

    def _progress(self, name: str, job: dict, now: float) -> None:
        fake = self.pods[name]
        attempt = self.attempts.get(name, 0)
        pod_key = (PODS, NS, self._pod_name(name))
        for trainer in fake.trainers:
            trainer.advance((now - self.started[name]) * self.behaviour.rate(trainer.batch_size))
            crashes = self.behaviour.failures.get((trainer.batch_size, trainer.seed), 0)
            if attempt < crashes and trainer.step >= min(trainer.n, trainer.max_steps) / 2:
                self._crash(name, job, pod_key)
                return
        if not fake.finished:
            return
        done = self.finished_at.setdefault(name, now)
        if now - done < self.behaviour.linger:
            return  # the trainers linger, still serving their final metrics
        message = fake.message(self.behaviour.corrupt_messages)
        self.k.objects[pod_key].patch({"status": {"phase": "Succeeded", "containerStatuses": [
            {"name": "trainer", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                      "message": message}}}]}})
        self.pods.pop(name).close()
        self.k.objects[JOBS, NS, name].patch({"status": {
            "active": None, "succeeded": 1, "completionTime": _ts(),
            "conditions": [{"type": "Complete", "status": "True"}]}})

    def _crash(self, name: str, job: dict, pod_key: tuple) -> None:
        self.k.objects[pod_key].patch({"status": {"phase": "Failed", "containerStatuses": [
            {"name": "trainer", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                      "message": "RuntimeError: CUDA error: out of memory"}}}]}})
        self.pods.pop(name).close()
        attempt = self.attempts.get(name, 0) + 1
        self.attempts[name] = attempt
        limit = int(job["spec"].get("backoffLimit", 6))
        if attempt > limit:
            self.k.objects[JOBS, NS, name].patch({"status": {
                "active": None, "failed": attempt, "conditions": [{
                    "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}]}})
        else:
            self.k.objects[JOBS, NS, name].patch({"status": {"failed": attempt}})


def _ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakePrometheus:
    """Prometheus's instant-query API over HTTP, answering from the fake trainers' state.

    It keeps what it once saw (like Prometheus keeps a stale series for a while), so a final
    value survives its pod. `down = True` makes it answer 503.
    """

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.down = False
        self.seen: dict[tuple[int, int], list[tuple[dict, float]]] = {}
        self.queries: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                outer.queries.append(query)
                if outer.down or url.path != "/api/v1/query":
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"status": "success", "data": {
                    "resultType": "vector", "result": outer.answer(query)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, query: str) -> list[dict]:
        for t in self.cluster.live_trainers():
            self.seen[(t.batch_size, t.seed)] = t.samples()
        rows = []
        for samples in self.seen.values():
            for labels, value in samples:
                if f'sweep="{labels["sweep"]}"' in query:
                    rows.append({"metric": labels, "value": [time.time(), str(value)]})
        return rows

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# The operator and the sweeps
# ---------------------------------------------------------------------------------------------


def sweep_manifest(name: str = "demo", **spec: Any) -> dict:
    """The small valid example sweep, with spec fields replaced by `spec`."""
    body = yaml.safe_load(SWEEP_FILE.read_text())
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return body


def stored(body: dict) -> dict:
    """What an API server would store: uid, resourceVersion, generation, timestamps."""
    body = copy.deepcopy(body)
    meta = body.setdefault("metadata", {})
    meta.setdefault("namespace", NS)
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("resourceVersion", "1")
    meta.setdefault("generation", 1)
    meta.setdefault("creationTimestamp", _ts())
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
