"""From what was read of a sweep to the planner's observations: pure, so the mapping from
Job, pod and metrics states to trial phases is tested without a cluster.

Metrics and termination messages come from the user's trainer (the built-in one or the user's
own, speaking the trial protocol): values that are not finite steps >= 0 (or above
spec.target.maxSteps) are refused, and a result line is checked as the protocol says
(`critbatch.protocol.result_problem`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from critbatch.metrics import TrialMetrics
from critbatch.numbers import finite_float, number_text
from critbatch.planner import Observation, Phase
from critbatch.protocol import RESULT_FILE, result_problem, result_value
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey
from critbatch_operator.jobs import BAD_CONFIG_EXIT, CONTAINER, TERMINATION_LOG
from critbatch_operator.world import World

MAX_REASON = 400
# The kubelet keeps 4 KiB of a termination message; more is not the trainer's result.
MAX_MESSAGE = 16 * 1024
MAX_INVALID_LISTED = 3  # trials named in a MetricsInvalid message
RESULT_MISSING = (f"ResultMissing: the trainer exited 0 without a result: the trial protocol "
                  f"needs its result JSON in {RESULT_FILE} ({TERMINATION_LOG})")


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


def _named_trial(data: Any) -> TrialKey | None:
    """The trial a parsed line says it is the result of, when it says so in integers."""
    if not isinstance(data, dict):
        return None
    b, s = data.get("batch_size"), data.get("seed")
    return TrialKey(b, s) if type(b) is int and type(s) is int else None


@dataclass(frozen=True)
class Termination:
    """What the newest pod that exited 0 says of a trial: its result, or why its result line
    is refused (`problem`), or that it has none (`missing`); all empty while no pod has exited
    0."""

    result: dict | None = None
    problem: str | None = None
    missing: bool = False


def _read_message(term: Mapping[str, Any], key: TrialKey, *, siblings: Collection[TrialKey],
                  sweep: str | None, max_steps: int | None) -> Termination:
    """The trial's result in one exited pod's message. Lines of the pod's other trials are
    theirs; any other JSON line is this trial's to check, so a custom trainer that reports
    another trial, or garbage, is told what it broke. Text that is not JSON is a log line."""
    lines = _message_lines(term)
    problem = None
    json_seen = False
    for line in reversed(lines):
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            continue
        json_seen = True
        named = _named_trial(data)
        if named is not None and named != key and named in siblings:
            continue
        why = result_problem(data, key, sweep=sweep, max_steps=max_steps)
        if why is None:
            return Termination(result=data)
        problem = problem or why
    if problem is not None:
        return Termination(problem=problem)
    if lines and not json_seen:
        return Termination(problem=f"no JSON result line, got {_printable(lines[-1], 40)!r}")
    return Termination(missing=True)


def termination_results(key: TrialKey, pods: Sequence[Mapping[str, Any]],
                        max_steps: int | None = None, *, sweep: str | None = None,
                        siblings: Collection[TrialKey] = ()) -> Termination:
    """The trial's result as the newest pod that exited 0 wrote it to its termination message
    (a pod running several trials, `siblings`, writes one line each). A pod exits 0 once, when
    its trainer finished, so its message is the trainer's last word: checked as the protocol
    says (`critbatch.protocol.result_problem`: this trial's, of `sweep`, steps at most
    `max_steps`), or missing."""
    for pod in reversed(pods):
        term = _terminated(pod)
        if term and term.get("exitCode") == 0:
            return _read_message(term, key, siblings=siblings, sweep=sweep,
                                 max_steps=max_steps)
    return Termination()


def termination_result(key: TrialKey, pods: Sequence[Mapping[str, Any]],
                       max_steps: int | None = None, *, sweep: str | None = None,
                       siblings: Collection[TrialKey] = ()) -> dict | None:
    """The trial's valid result JSON from its pods' termination messages, else None."""
    return termination_results(key, pods, max_steps, sweep=sweep, siblings=siblings).result


def _last_crash(pods: Sequence[Mapping[str, Any]]) -> dict | None:
    for pod in reversed(pods):
        term = _terminated(pod)
        if term and term.get("exitCode") not in (None, 0):
            return term
    return None


def _crash_tail(term: Mapping[str, Any]) -> str:
    tail = _printable((_message_lines(term)[-1:] or [""])[0])
    return f"exit code {term.get('exitCode')} ({term.get('reason')}) {tail}".strip()


def _failed_reason(condition: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """Why a failed Job failed: bad configuration (exit 2, never retried) first, for the
    trainer's own message says what to fix; else the Job's reason and the last crash."""
    crash = _last_crash(pods)
    if crash is not None and crash.get("exitCode") == BAD_CONFIG_EXIT:
        tail = _printable((_message_lines(crash)[-1:] or [""])[0])
        return (f"BadConfiguration: the trainer exited {BAD_CONFIG_EXIT} (bad configuration, "
                f"not retried){': ' + tail if tail else ''}")
    reason = (f"{condition.get('reason') or 'Failed'}: "
              f"{condition.get('message') or ''}").strip().rstrip(":")
    return f"{reason}; last pod: {_crash_tail(crash)}" if crash is not None else reason


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
    sweep: str | None = None,
    siblings: Collection[TrialKey] = (),
) -> tuple[Observation, str | None]:
    """One trial's observation, and a note when metrics and termination message disagree.

    Refused metrics (`metrics_problem`) are ignored: the trial goes on as if they were absent,
    its reason says why. A pod that exited 0 said its last word: a refused result line makes
    the trial Failed with reason `MetricsInvalid: termination message: ...`, no result line
    `ResultMissing: ...`, unless the metrics decided the trial. `sweep` and `siblings` (the
    other trials of its pod) tell its result line from others'.
    """
    status = job.get("status") or {}
    restarts = int(status.get("failed") or 0)
    conds = _true_conditions(job)
    term = termination_results(key, pods, max_steps, sweep=sweep, siblings=siblings)
    result = term.result
    note = None
    ignored = metrics_problem(metrics, max_steps) if metrics is not None else None
    if ignored is not None:
        metrics = None
        ignored = f"metrics invalid ({_printable(ignored)}): ignored"
    value = finite_float(metrics.value) if metrics is not None else None
    step = finite_float(metrics.step) if metrics is not None else None
    msource = source if metrics is not None else None
    seen = {"steps": step, "value": value, "source": msource, "restarts": restarts}

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
        return Observation(key, Phase.Reached if reached else Phase.Censored, steps=steps,
                           value=value, result=result, source=source, restarts=restarts), note

    if "Failed" in conds or "FailureTarget" in conds:
        reason = _failed_reason(conds.get("Failed") or conds["FailureTarget"], pods)
        return Observation(key, Phase.Failed, reason=reason[:MAX_REASON], **seen), None

    completions = int((job.get("spec") or {}).get("completions") or 1)  # a pod per node
    finished = ("Complete" in conds or "SuccessCriteriaMet" in conds
                or int(status.get("succeeded") or 0) >= completions)
    if result is not None:
        return Observation(key, Phase.Reached if result["reached"] else Phase.Censored,
                           steps=float(result["steps"]), value=result_value(result),
                           result=result, source="termination-message",
                           restarts=restarts), None
    if term.problem is not None:
        reason = f"MetricsInvalid: termination message: {_printable(term.problem)}"
        return Observation(key, Phase.Failed, reason=reason[:MAX_REASON], **seen), None
    if term.missing:
        return Observation(key, Phase.Failed, reason=RESULT_MISSING, **seen), None
    if finished and not pods and source is not None:
        return Observation(key, Phase.Failed,
                           reason="finished, but its pods are gone and the metrics do not "
                                  "hold its result", restarts=restarts), None
    if finished:
        return Observation(key, Phase.Running, reason="finished; waiting for its result",
                           **seen), None

    suspended = (job.get("spec") or {}).get("suspend") or "Suspended" in conds
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    phase = Phase.Running if running and not suspended else Phase.Pending
    reason = "suspended: waiting for admission by its queue" if suspended else ignored
    return Observation(key, phase, reason=reason, **seen), None


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
        siblings = {k for k, j in world.jobs.items() if j is job and k != key}
        obs, note = observe_trial(key, job, world.pods.get(key, []), metrics=m,
                                  source=world.source, max_steps=max_steps, sweep=sweep.name,
                                  siblings=siblings)
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
