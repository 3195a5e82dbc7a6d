"""Reading the world of one sweep: its Jobs, their pods, and the trainers' metrics.

`read_world` makes the calls (blocking: run it in a thread); `critbatch_operator.observations`
turns what was read into the planner's observations.

Only Jobs whose ownerReference is the sweep's uid count, and only pods owned by those Jobs: a
Job that merely carries the sweep's labels or a trial's name (one left by a deleted sweep of the
same name, say) is never adopted. Of a trial on several nodes only the pods of index 0 count:
its rank 0 serves the metrics and writes the result; the others' failures show in the Job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from critbatch.metrics import MetricsUnavailable, PrometheusClient, TrialMetrics, scrape
from critbatch.planner import job_name
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey, TrialsError, parse_trials
from critbatch_operator.indexed import speaks_for_trial
from critbatch_operator.jobs import (
    BATCH_LABEL,
    SEED_LABEL,
    SWEEP_LABEL,
    TRIALS_ANNOTATION,
    sweep_label_value,
)
from critbatch_operator.kube import Kube, foreign_reason, owned_by, owner_refs

SCRAPE_WORKERS = 16
# All direct scrapes of one reconcile end within this many --metrics-timeout: a sweep with many
# slow pods cannot hold its reconcile longer (pods not read in time keep their last steps).
SCRAPE_PHASE_TIMEOUTS = 2.0
# A Job's trials annotation lists at most MAX_TRIALS_PER_GROUP pairs of short numbers; a longer
# one is not ours and is not parsed.
MAX_ANNOTATION = 1024


@dataclass(kw_only=True)
class World:
    """What one read of the cluster and the metrics source returned."""

    jobs: dict[TrialKey, dict] = field(default_factory=dict)
    pods: dict[TrialKey, list[dict]] = field(default_factory=dict)
    metrics: dict[tuple[int, int], TrialMetrics] = field(default_factory=dict)
    source: str | None = None  # "prometheus" | "direct": where `metrics` came from
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Jobs with the sweep's labels and a trial's name that the sweep does not own: name -> why.
    foreign: dict[str, str] = field(default_factory=dict)


def metrics_source(sweep: Sweep, default_url: str | None) -> tuple[str, str | None]:
    """("prometheus", url) or ("direct", None) per spec.metrics and the operator's default."""
    url = sweep.metrics.prometheus_url or default_url
    if sweep.metrics.source == "direct" or (sweep.metrics.source == "auto" and not url):
        return "direct", None
    return "prometheus", url


def _keys(obj: Mapping[str, Any], sweep: Sweep) -> list[TrialKey]:
    """The trials a Job or pod runs: its `critbatch.dev/trials` annotation, else its labels;
    none when what it says cannot be read (the object is then not one of the sweep's trials)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(SWEEP_LABEL) != sweep_label_value(sweep.name):
        return []
    listed = (meta.get("annotations") or {}).get(TRIALS_ANNOTATION)
    try:
        if listed:
            if not isinstance(listed, str) or len(listed) > MAX_ANNOTATION:
                return []
            return parse_trials(listed)
        return [TrialKey(int(labels[BATCH_LABEL]), int(labels[SEED_LABEL]))]
    except (KeyError, ValueError, TypeError, TrialsError):
        return []


def _pod_job(pod: Mapping[str, Any], jobs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the pod's owner is one of `jobs`: its name and uid (a pod of an older Job of
    the same name is not)."""
    for ref in owner_refs(pod):
        job = jobs.get(ref.get("name")) if ref.get("kind") == "Job" else None
        if job is not None and (ref.get("uid") or None) == ((job.get("metadata") or {}).get(
                "uid") or None):
            return True
    return False


def group_objects(sweep: Sweep, jobs: Sequence[dict], pods: Sequence[dict]) -> World:
    """Jobs and pods of this sweep by trial (labels are checked here too, not only by selector);
    a Job and its pods appear under each trial they run. Only Jobs the sweep owns count, and
    only pods those Jobs own (of an Indexed Job, index 0's); foreign Jobs holding a trial's
    name are listed in `foreign`."""
    world = World()
    wanted = set(sweep.trials())
    names = {job_name(sweep.name, key) for key in wanted}
    owned: dict[str, dict] = {}
    for job in jobs:
        meta = job.get("metadata") or {}
        if not owned_by(job, sweep.uid):
            if meta.get("name") in names and _keys(job, sweep):
                world.foreign[meta["name"]] = foreign_reason(job)
            continue
        if meta.get("deletionTimestamp"):
            continue
        owned[meta.get("name")] = job
        for key in _keys(job, sweep):
            if key in wanted:
                world.jobs[key] = job
    for pod in pods:
        if not _pod_job(pod, owned) or not speaks_for_trial(pod):
            continue
        for key in _keys(pod, sweep):
            if key in wanted:
                world.pods.setdefault(key, []).append(pod)
    for group in world.pods.values():
        group.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    return world


def _metrics_port(pod: Mapping[str, Any], default: int) -> int:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for port in c.get("ports") or []:
            if port.get("name") == "metrics" and port.get("containerPort"):
                return int(port["containerPort"])
    return default


def scrape_targets(world: World, default_port: int) -> dict[TrialKey, str]:
    """The /metrics URL of each trial's newest running pod (the one that can still answer)."""
    out = {}
    for key, pods in world.pods.items():
        for pod in reversed(pods):
            status = pod.get("status") or {}
            ip = status.get("podIP")
            if status.get("phase") == "Running" and ip:
                host = f"[{ip}]" if ":" in ip else ip
                out[key] = f"http://{host}:{_metrics_port(pod, default_port)}/metrics"
                break
    return out


def read_world(
    kube: Kube,
    sweep: Sweep,
    *,
    prometheus_url: str | None,
    namespace_label: str = "namespace",
    trainer_port: int = 9100,
    timeout: float = 5.0,
    query_prometheus: bool = True,
) -> World:
    """List the sweep's Jobs and pods (two calls) and read its trainers' metrics."""
    selector = f"{SWEEP_LABEL}={sweep_label_value(sweep.name)}"
    world = group_objects(sweep, kube.list_jobs(sweep.namespace, selector),
                          kube.list_pods(sweep.namespace, selector))
    kind, url = metrics_source(sweep, prometheus_url)
    if kind == "prometheus":
        if not query_prometheus:
            world.problems.append(("MetricsUnavailable", f"Prometheus at {url} unreachable or "
                                                         "invalid; waiting before retrying"))
            return world
        matchers = {namespace_label: sweep.namespace} if namespace_label else None
        trials = {(k.batch_size, k.seed) for k in sweep.trials()}
        try:
            world.metrics = PrometheusClient(url, timeout).trial_metrics(sweep.name, matchers,
                                                                         trials)
            world.source = "prometheus"
        except MetricsUnavailable as exc:
            world.problems.append(("MetricsUnavailable", str(exc)))
        return world
    world.source = "direct"
    targets = scrape_targets(world, trainer_port)
    deadline = time.monotonic() + SCRAPE_PHASE_TIMEOUTS * timeout
    by_url: dict[str, set[tuple[int, int]]] = {}
    for key, url_ in targets.items():
        by_url.setdefault(url_, set()).add((key.batch_size, key.seed))

    def one(url: str) -> dict[tuple[int, int], TrialMetrics]:
        try:
            return scrape(url, timeout, deadline=deadline, trials=by_url[url])
        except MetricsUnavailable:
            return {}  # a starting or finishing pod; its termination message remains

    urls = sorted(by_url)  # a pod's trials share its one endpoint
    if urls:
        # Concurrently: one slow pod must not hold up the reconcile by `timeout` per pod.
        with ThreadPoolExecutor(max_workers=min(SCRAPE_WORKERS, len(urls))) as pool:
            pages = dict(zip(urls, pool.map(one, urls), strict=True))
        for key, url in targets.items():
            m = pages[url].get((key.batch_size, key.seed))
            if m is not None:
                world.metrics[(key.batch_size, key.seed)] = m
    return world
