"""Reading the world of one sweep: its Jobs, their pods, and the trainers' metrics.

`read_world` makes the calls (blocking: run it in a thread); `observe` turns what was read into
the planner's observations and is pure, so the mapping from Job/pod/metrics states to trial
phases is tested without a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from critbatch.metrics import MetricsUnavailable, PrometheusClient, TrialMetrics, scrape
from critbatch.planner import Observation, Phase
from critbatch.spec import Sweep, TrialKey
from critbatch_operator.jobs import (
    BATCH_LABEL,
    CONTAINER,
    SEED_LABEL,
    SWEEP_LABEL,
    TRIALS_ANNOTATION,
    sweep_label_value,
)
from critbatch_operator.kube import Kube

MAX_REASON = 400
SCRAPE_WORKERS = 16


@dataclass
class World:
    """What one read of the cluster and the metrics source returned."""

    jobs: dict[TrialKey, dict] = field(default_factory=dict)
    pods: dict[TrialKey, list[dict]] = field(default_factory=dict)
    metrics: dict[tuple[int, int], TrialMetrics] = field(default_factory=dict)
    source: str | None = None  # "prometheus" | "direct": where `metrics` came from
    problems: list[tuple[str, str]] = field(default_factory=list)


def metrics_source(sweep: Sweep, default_url: str | None) -> tuple[str, str | None]:
    """("prometheus", url) or ("direct", None) per spec.metrics and the operator's default."""
    url = sweep.metrics.prometheus_url or default_url
    if sweep.metrics.source == "direct" or (sweep.metrics.source == "auto" and not url):
        return "direct", None
    return "prometheus", url


def _keys(obj: Mapping[str, Any], sweep: Sweep) -> list[TrialKey]:
    """The trials a Job or pod runs: its `critbatch.dev/trials` annotation, else its labels."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(SWEEP_LABEL) != sweep_label_value(sweep.name):
        return []
    try:
        listed = (meta.get("annotations") or {}).get(TRIALS_ANNOTATION)
        if listed:
            return [TrialKey(*map(int, pair.split(":"))) for pair in listed.split(",")]
        return [TrialKey(int(labels[BATCH_LABEL]), int(labels[SEED_LABEL]))]
    except (KeyError, ValueError, TypeError):
        return []


def group_objects(sweep: Sweep, jobs: Sequence[dict], pods: Sequence[dict]) -> World:
    """Jobs and pods of this sweep by trial (labels are checked here too, not only by selector);
    a Job and its pods appear under each trial they run."""
    world = World()
    wanted = set(sweep.trials())
    for job in jobs:
        if (job.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for key in _keys(job, sweep):
            if key in wanted:
                world.jobs[key] = job
    for pod in pods:
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
            world.problems.append(("MetricsUnavailable",
                                   f"Prometheus at {url} unreachable; waiting before retrying"))
            return world
        matchers = {namespace_label: sweep.namespace} if namespace_label else None
        try:
            world.metrics = PrometheusClient(url, timeout).trial_metrics(sweep.name, matchers)
            world.source = "prometheus"
        except MetricsUnavailable as exc:
            world.problems.append(("MetricsUnavailable", f"Prometheus unreachable: {exc}"))
        return world
    world.source = "direct"
    targets = scrape_targets(world, trainer_port)

    def one(url: str) -> dict[tuple[int, int], TrialMetrics]:
        try:
            return scrape(url, timeout)
        except MetricsUnavailable:
            return {}  # a starting or finishing pod; its termination message remains

    urls = sorted(set(targets.values()))  # a pod's trials share its one endpoint
    if urls:
        # Concurrently: one slow pod must not hold up the reconcile by `timeout` per pod.
        with ThreadPoolExecutor(max_workers=min(SCRAPE_WORKERS, len(urls))) as pool:
            pages = dict(zip(urls, pool.map(one, urls), strict=True))
        for key, url in targets.items():
            m = pages[url].get((key.batch_size, key.seed))
            if m is not None:
                world.metrics[(key.batch_size, key.seed)] = m
    return world


# ---------------------------------------------------------------------------------------------
# From objects to observations (pure)
# ---------------------------------------------------------------------------------------------


def _true_conditions(job: Mapping[str, Any]) -> dict[str, dict]:
    conds = ((job.get("status") or {}).get("conditions")) or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


def _terminated(pod: Mapping[str, Any]) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return ((cs.get("state") or {}).get("terminated")
                    or (cs.get("lastState") or {}).get("terminated"))
    return None


def termination_result(key: TrialKey, pods: Sequence[Mapping[str, Any]]) -> dict | None:
    """The trial's result JSON from the newest pod that exited 0 with one (a pod running several
    trials writes one line each)."""
    for pod in reversed(pods):
        term = _terminated(pod)
        if not term or term.get("exitCode") != 0 or not term.get("message"):
            continue
        for line in reversed(term["message"].strip().splitlines()):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if (isinstance(result, dict) and "reached" in result and "steps" in result
                    and (result.get("batch_size"), result.get("seed")) == (key.batch_size,
                                                                            key.seed)):
                return result
    return None


def _crash_tail(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in reversed(pods):
        term = _terminated(pod)
        if term and term.get("exitCode") not in (None, 0):
            tail = (term.get("message") or "").strip().splitlines()[-1:] or [""]
            return f"exit code {term.get('exitCode')} ({term.get('reason')}) {tail[0]}".strip()
    return None


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _from_metrics(m: TrialMetrics) -> tuple[bool, float | None] | None:
    """(reached, steps) when the metrics say the trial is decided, else None."""
    if m.reached and m.steps_to_threshold is not None:
        return True, m.steps_to_threshold
    if m.finished:
        if m.reached:
            return True, m.steps_to_threshold if m.steps_to_threshold is not None else m.step
        return False, m.step
    return None


def observe_trial(
    key: TrialKey,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    metrics: TrialMetrics | None,
    source: str | None,
) -> tuple[Observation, str | None]:
    """One trial's observation, and a note when metrics and termination message disagree."""
    status = job.get("status") or {}
    restarts = int(status.get("failed") or 0)
    conds = _true_conditions(job)
    result = termination_result(key, pods)
    note = None

    decided = _from_metrics(metrics) if metrics is not None else None
    if decided is not None and result is not None:
        steps = _finite(result.get("steps"))
        if bool(result.get("reached")) != decided[0] or (
                steps is not None and decided[1] is not None and abs(steps - decided[1]) > 0.5):
            note = (f"{source} says reached={decided[0]} steps={decided[1]:g}, the termination "
                    f"message says reached={bool(result.get('reached'))} steps={steps}; "
                    f"using {source}")

    if decided is not None:
        reached, steps = decided
        return Observation(key, Phase.Reached if reached else Phase.Censored, steps,
                           metrics.fid, result, source, None, restarts), note

    if "Failed" in conds or "FailureTarget" in conds:
        c = conds.get("Failed") or conds["FailureTarget"]
        reason = f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".strip().rstrip(":")
        tail = _crash_tail(pods)
        if tail:
            reason = f"{reason}; last pod: {tail}"
        return Observation(key, Phase.Failed, _finite(metrics.step) if metrics else None,
                           metrics.fid if metrics else None, None, source if metrics else None,
                           reason[:MAX_REASON], restarts), None

    finished = ("Complete" in conds or "SuccessCriteriaMet" in conds
                or int(status.get("succeeded") or 0) > 0)
    if result is not None:
        reached = bool(result.get("reached"))
        steps = _finite(result.get("steps"))
        return Observation(key, Phase.Reached if reached else Phase.Censored, steps,
                           _finite(result.get("fid")), result, "termination-message", None,
                           restarts), None
    if finished and not pods and source is not None:
        return Observation(key, Phase.Failed, None, None, None, None,
                           "finished, but its pods are gone and the metrics do not hold its "
                           "result", restarts), None
    if finished:
        return Observation(key, Phase.Running, _finite(metrics.step) if metrics else None,
                           metrics.fid if metrics else None, None, source if metrics else None,
                           "finished; waiting for its result", restarts), None

    suspended = (job.get("spec") or {}).get("suspend") or "Suspended" in conds
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    phase = Phase.Running if running and not suspended else Phase.Pending
    reason = "suspended: waiting for admission by its queue" if suspended else None
    if metrics is not None:
        return Observation(key, phase, _finite(metrics.step), metrics.fid, None, source, reason,
                           restarts), None
    return Observation(key, phase, None, None, None, None, reason, restarts), None


def observe(
    sweep: Sweep, world: World
) -> tuple[dict[TrialKey, Observation], list[tuple[TrialKey, str]]]:
    """Observations of every trial that has a Job, and disagreement notes for Events."""
    out: dict[TrialKey, Observation] = {}
    notes = []
    for key, job in world.jobs.items():
        m = world.metrics.get((key.batch_size, key.seed))
        obs, note = observe_trial(key, job, world.pods.get(key, []), m, world.source)
        out[key] = replace(obs, job=(job.get("metadata") or {}).get("name"))
        if note:
            notes.append((key, f"trial batch size {key.batch_size} seed {key.seed}: {note}"))
    return out, notes


def late_disagreements(previous_status: Mapping[str, Any],
                       world: World) -> list[tuple[TrialKey, str]]:
    """Trials decided from metrics earlier whose termination message, read now, disagrees.

    The metrics usually decide a trial while its trainer lingers; its termination message only
    appears when the pod ends, so the two are compared against the recorded result.
    """
    out = []
    for row in previous_status.get("trials") or []:
        if row.get("phase") not in ("Reached", "Censored") or row.get("source") not in (
                "prometheus", "direct"):
            continue
        key = TrialKey(int(row["batchSize"]), int(row["seed"]))
        result = termination_result(key, world.pods.get(key, []))
        if result is None:
            continue
        steps = _finite(result.get("steps"))
        reached = bool(result.get("reached"))
        if reached != (row["phase"] == "Reached") or (
                steps is not None and row.get("steps") is not None
                and abs(steps - float(row["steps"])) > 0.5):
            out.append((key, f"trial batch size {key.batch_size} seed {key.seed}: "
                             f"{row['source']} said {row['phase'].lower()} in {row.get('steps')} "
                             f"steps, the termination message says reached={reached} in "
                             f"{steps:g} steps; keeping {row['source']}'s"))
    return out
