"""Reading the world of one sweep: its Jobs, their pods, and the trainers' metrics.

`read_world` makes the calls (blocking: run it in a thread); `observe` turns what was read into
the planner's observations and is pure, so the mapping from Job/pod/metrics states to trial
phases is tested without a cluster.

Only Jobs whose ownerReference is the sweep's uid count, and only pods owned by those Jobs: a
Job that merely carries the sweep's labels or a trial's name (one left by a deleted sweep of the
same name, say) is never adopted. Metrics and termination messages come from the user's trainer:
values that are not finite steps >= 0 (or above spec.target.maxSteps) are refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from critbatch.metrics import (
    MetricsUnavailable,
    PrometheusClient,
    TrialMetrics,
    number_text,
    result_problem,
    scrape,
)
from critbatch.planner import Observation, Phase, job_name
from critbatch.spec import Sweep, TrialKey
from critbatch_operator.jobs import (
    BATCH_LABEL,
    CONTAINER,
    SEED_LABEL,
    SWEEP_LABEL,
    TRIALS_ANNOTATION,
    sweep_label_value,
)
from critbatch_operator.kube import Kube, foreign_reason, owned_by, owner_refs

MAX_REASON = 400
SCRAPE_WORKERS = 16
# All direct scrapes of one reconcile end within this many --metrics-timeout: a sweep with many
# slow pods cannot hold its reconcile longer (pods not read in time keep their last steps).
SCRAPE_PHASE_TIMEOUTS = 2.0
# The kubelet keeps 4 KiB of a termination message; more is not the trainer's result.
MAX_MESSAGE = 16 * 1024
MAX_INVALID_LISTED = 3  # trials named in a MetricsInvalid message


@dataclass
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
    only pods those Jobs own; foreign Jobs holding a trial's name are listed in `foreign`."""
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
        if not _pod_job(pod, owned):
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


def _printable(text: str, limit: int = 200) -> str:
    """Text from the trainer as a status or Event may show it: printable, one line, cut."""
    out = "".join(c if c.isprintable() else " " for c in text[:limit * 2]).strip()
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _message_lines(term: Mapping[str, Any]) -> list[str]:
    message = term.get("message")
    if not isinstance(message, str):
        return []
    return message[-MAX_MESSAGE:].strip().splitlines()


def _is_trial(data: Any, key: TrialKey) -> bool:
    """Whether a parsed line is a result line of this trial (one of a pod's trials)."""
    return (isinstance(data, dict) and "reached" in data and "steps" in data
            and type(data.get("batch_size")) is int and type(data.get("seed")) is int
            and (data["batch_size"], data["seed"]) == (key.batch_size, key.seed))


def _result_problem(data: Mapping[str, Any], max_steps: int | None) -> str | None:
    problem = result_problem(data)
    if problem is None and max_steps is not None and data["steps"] > max_steps:
        steps = number_text(float(data["steps"]))
        problem = f"steps {steps} above spec.target.maxSteps {max_steps}"
    return problem


def termination_results(key: TrialKey, pods: Sequence[Mapping[str, Any]],
                        max_steps: int | None = None) -> tuple[dict | None, str | None]:
    """(the trial's result, None), or (None, why its result line is refused), or (None, None):
    from the newest pod that exited 0 with a result line for the trial (a pod running several
    trials writes one line each). The message is the trainer's: lines are checked like
    metrics (`critbatch.metrics.result_problem`, and steps at most `max_steps`)."""
    for pod in reversed(pods):
        term = _terminated(pod)
        if not term or term.get("exitCode") != 0:
            continue
        problem = None
        for line in reversed(_message_lines(term)):
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not _is_trial(data, key):
                continue
            why = _result_problem(data, max_steps)
            if why is None:
                return data, None
            problem = problem or why
        if problem is not None:
            return None, problem
    return None, None


def termination_result(key: TrialKey, pods: Sequence[Mapping[str, Any]],
                       max_steps: int | None = None) -> dict | None:
    """The trial's valid result JSON from its pods' termination messages, else None."""
    return termination_results(key, pods, max_steps)[0]


def _crash_tail(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in reversed(pods):
        term = _terminated(pod)
        if term and term.get("exitCode") not in (None, 0):
            tail = _printable((_message_lines(term)[-1:] or [""])[0])
            return f"exit code {term.get('exitCode')} ({term.get('reason')}) {tail}".strip()
    return None


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _text(x: float | None) -> str:
    return "unknown" if x is None else number_text(x)


def metrics_problem(m: TrialMetrics, max_steps: int | None = None) -> str | None:
    """Why a trial's metrics are refused: the reader's reason, or a step above the budget."""
    if m.invalid:
        return m.invalid
    for name in ("step", "steps_to_threshold"):
        value = getattr(m, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{name} {number_text(value)}"
        if value is not None and max_steps is not None and value > max_steps:
            return f"{name} {number_text(value)} above spec.target.maxSteps {max_steps}"
    return None


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
    max_steps: int | None = None,
) -> tuple[Observation, str | None]:
    """One trial's observation, and a note when metrics and termination message disagree.

    Refused metrics (`metrics_problem`) are ignored: the trial goes on as if they were absent,
    its reason says why. A refused result line in the termination message makes the trial
    Failed with reason `MetricsInvalid: ...`: it is the trainer's last word.
    """
    status = job.get("status") or {}
    restarts = int(status.get("failed") or 0)
    conds = _true_conditions(job)
    result, bad_result = termination_results(key, pods, max_steps)
    note = None
    ignored = metrics_problem(metrics, max_steps) if metrics is not None else None
    if ignored is not None:
        metrics = None
        ignored = f"metrics invalid ({_printable(ignored)}): ignored"
    fid = _finite(metrics.fid) if metrics is not None else None
    step = _finite(metrics.step) if metrics is not None else None
    msource = source if metrics is not None else None

    decided = _from_metrics(metrics) if metrics is not None else None
    if decided is not None and result is not None:
        steps = _finite(result.get("steps"))
        if result["reached"] != decided[0] or (
                steps is not None and decided[1] is not None and abs(steps - decided[1]) > 0.5):
            note = (f"{source} says reached={decided[0]} steps={_text(decided[1])}, the "
                    f"termination message says reached={result['reached']} "
                    f"steps={_text(steps)}; using {source}")

    if decided is not None:
        reached, steps = decided
        return Observation(key, Phase.Reached if reached else Phase.Censored, steps=steps, fid=fid,
                           result=result, source=source, restarts=restarts), note

    if "Failed" in conds or "FailureTarget" in conds:
        c = conds.get("Failed") or conds["FailureTarget"]
        reason = f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".strip().rstrip(":")
        tail = _crash_tail(pods)
        if tail:
            reason = f"{reason}; last pod: {tail}"
        return Observation(key, Phase.Failed, steps=step, fid=fid, source=msource,
                           reason=reason[:MAX_REASON], restarts=restarts), None

    finished = ("Complete" in conds or "SuccessCriteriaMet" in conds
                or int(status.get("succeeded") or 0) > 0)
    if result is not None:
        return Observation(key, Phase.Reached if result["reached"] else Phase.Censored,
                           steps=float(result["steps"]), fid=_finite(result.get("fid")),
                           result=result, source="termination-message",
                           restarts=restarts), None
    if bad_result is not None:
        reason = f"MetricsInvalid: termination message: {_printable(bad_result)}"
        return Observation(key, Phase.Failed, steps=step, fid=fid, source=msource,
                           reason=reason[:MAX_REASON], restarts=restarts), None
    if finished and not pods and source is not None:
        return Observation(key, Phase.Failed,
                           reason="finished, but its pods are gone and the metrics do not "
                                  "hold its result", restarts=restarts), None
    if finished:
        return Observation(key, Phase.Running, steps=step, fid=fid, source=msource,
                           reason="finished; waiting for its result", restarts=restarts), None

    suspended = (job.get("spec") or {}).get("suspend") or "Suspended" in conds
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    phase = Phase.Running if running and not suspended else Phase.Pending
    reason = "suspended: waiting for admission by its queue" if suspended else ignored
    return Observation(key, phase, steps=step, fid=fid, source=msource, reason=reason,
                       restarts=restarts), None


def observe(
    sweep: Sweep, world: World
) -> tuple[dict[TrialKey, Observation], list[tuple[TrialKey, str]]]:
    """Observations of every trial that has a Job, and disagreement notes for Events.

    Trials whose metrics were refused are also named in a `MetricsInvalid` problem appended
    to `world.problems` (the sweep's Degraded condition).
    """
    out: dict[TrialKey, Observation] = {}
    notes = []
    invalid = []
    max_steps = sweep.target.max_steps
    for key, job in world.jobs.items():
        m = world.metrics.get((key.batch_size, key.seed))
        obs, note = observe_trial(key, job, world.pods.get(key, []), m, world.source, max_steps)
        out[key] = replace(obs, job=(job.get("metadata") or {}).get("name"))
        if note:
            notes.append((key, f"trial batch size {key.batch_size} seed {key.seed}: {note}"))
        why = metrics_problem(m, max_steps) if m is not None else None
        if why is not None:
            invalid.append(f"b={key.batch_size} seed={key.seed}: {_printable(why)}")
    if invalid:
        listed = "; ".join(invalid[:MAX_INVALID_LISTED])
        more = f" and {len(invalid) - MAX_INVALID_LISTED} more" if len(
            invalid) > MAX_INVALID_LISTED else ""
        world.problems.append(("MetricsInvalid", f"{world.source} metrics of {len(invalid)} "
                                                 f"trial(s) refused and ignored ({listed}{more})"))
    return out, notes


def late_disagreements(previous_status: Mapping[str, Any],
                       world: World) -> list[tuple[TrialKey, str]]:
    """Trials decided from metrics earlier whose termination message, read now, disagrees.

    The metrics usually decide a trial while its trainer lingers; its termination message only
    appears when the pod ends, so the two are compared against the recorded result.
    """
    out = []
    for row in previous_status.get("trials") or []:
        if not isinstance(row, dict) or row.get("phase") not in ("Reached", "Censored") or \
                row.get("source") not in ("prometheus", "direct"):
            continue
        try:
            key = TrialKey(int(row["batchSize"]), int(row["seed"]))
        except (KeyError, TypeError, ValueError):
            continue
        result = termination_result(key, world.pods.get(key, []))
        if result is None:
            continue
        steps = float(result["steps"])
        reached = result["reached"]
        was = _finite(row.get("steps"))
        if reached != (row["phase"] == "Reached") or (
                was is not None and abs(steps - was) > 0.5):
            out.append((key, f"trial batch size {key.batch_size} seed {key.seed}: "
                             f"{row['source']} said {row['phase'].lower()} in {_text(was)} "
                             f"steps, the termination message says reached={reached} in "
                             f"{_text(steps)} steps; keeping {row['source']}'s"))
    return out
