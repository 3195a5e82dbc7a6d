"""From what was read of a sweep to the planner's observations: pure, so the mapping from
Job, pod and metrics states to trial phases is tested without a cluster.

Metrics and termination messages come from the user's trainer: values that are not finite
steps >= 0 (or above spec.target.maxSteps) are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from critbatch.metrics import TrialMetrics, result_problem
from critbatch.numbers import finite_float, number_text
from critbatch.planner import Observation, Phase
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.jobs import CONTAINER
from critbatch_operator.world import World

MAX_REASON = 400
# The kubelet keeps 4 KiB of a termination message; more is not the trainer's result.
MAX_MESSAGE = 16 * 1024
MAX_INVALID_LISTED = 3  # trials named in a MetricsInvalid message


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


def _steps_text(x: float | None) -> str:
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
    *,
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
    fid = finite_float(metrics.fid) if metrics is not None else None
    step = finite_float(metrics.step) if metrics is not None else None
    msource = source if metrics is not None else None

    decided = _from_metrics(metrics) if metrics is not None else None
    if decided is not None and result is not None:
        steps = finite_float(result.get("steps"))
        if result["reached"] != decided[0] or (
                steps is not None and decided[1] is not None and abs(steps - decided[1]) > 0.5):
            note = (f"{source} says reached={decided[0]} steps={_steps_text(decided[1])}, the "
                    f"termination message says reached={result['reached']} "
                    f"steps={_steps_text(steps)}; using {source}")

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
                           steps=float(result["steps"]), fid=finite_float(result.get("fid")),
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
        obs, note = observe_trial(key, job, world.pods.get(key, []), metrics=m,
                                  source=world.source, max_steps=max_steps)
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
        was = finite_float(row.get("steps"))
        if reached != (row["phase"] == "Reached") or (
                was is not None and abs(steps - was) > 0.5):
            out.append((key, f"trial batch size {key.batch_size} seed {key.seed}: "
                             f"{row['source']} said {row['phase'].lower()} in {_steps_text(was)} "
                             f"steps, the termination message says reached={reached} in "
                             f"{_steps_text(steps)} steps; keeping {row['source']}'s"))
    return out
