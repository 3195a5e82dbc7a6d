"""A sweep's conditions (Ready, Progressing, Degraded) and the Events between two statuses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from critbatch.errors import InputError
from critbatch.planning.trials import FINAL, Phase, TrialRecord, as_phase, previous_records
from critbatch.vocabulary import TrialKey


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}


def failed_where_it_matters(records: Sequence[TrialRecord],
                            critical: Mapping[str, Any]) -> list[int]:
    """Batch sizes with a failed trial that could change the answer: plausible ones, and ones
    where no other trial finished (no evidence at all)."""
    plausible = set(critical["plausible"] or [])
    finished = {r.key.batch_size for r in records
                if r.phase in (Phase.Reached, Phase.Censored, Phase.Pruned)}
    return sorted({r.key.batch_size for r in records if r.phase is Phase.Failed
                   and (r.key.batch_size in plausible or r.key.batch_size not in finished)})


def _ready(critical: Mapping[str, Any], total: int, generation: int, adaptive: bool) -> dict:
    """Ready only for an answer the evidence supports: one batch size holds the confidence."""
    answer, level = critical["mostProbable"], critical["confidence"]
    if answer is None:
        return _condition("Ready", False, "NoMeasurement",
                          "every trial finished but none reached the target: raise "
                          "spec.target.maxSteps or relax spec.target.threshold", generation)
    chance = (critical["probabilities"] or {}).get(str(answer), 0.0)
    if critical["resolved"]:
        return _condition("Ready", True, "Resolved",
                          f"critical batch size {answer} (probability {chance:.3g} of being the "
                          f"SFO argmin, at least {level:g}) over {total} trials", generation)
    plausible = ", ".join(map(str, critical["plausible"] or []))
    return _condition("Ready", False, "Unresolved",
                      f"most probable critical batch size {answer} (probability {chance:.3g}, "
                      f"below {level:g}); still plausible: {plausible}. "
                      + ("Raising spec.strategy.maxTrials or spec.seeds lets it go on"
                         if adaptive else "More seeds at those batch sizes (spec.seeds) or "
                         "spec.strategy.type adaptive can resolve it"), generation)


def sweep_conditions(
    records: Sequence[TrialRecord],
    critical: Mapping[str, Any],
    *,
    problems: Sequence[tuple[str, str]],
    started: bool,
    complete: bool,
    generation: int,
    adaptive: bool,
) -> list[dict]:
    """Ready, Progressing and Degraded for the trials `records` and the answer `critical`;
    `problems` are the backend's (reason, message) pairs, the first reason is Degraded's."""
    done = sum(1 for r in records if r.phase in FINAL)
    total = len(records)
    missing = failed_where_it_matters(records, critical)
    if complete and missing:
        ready = _condition("Ready", False, "TrialsFailed",
                           "trials failed at batch size(s) " + ", ".join(map(str, missing))
                           + ", which could still be the answer (plausible, or no other trial "
                           "there finished): the answer is not sound until they are rerun",
                           generation)
    elif complete:
        ready = _ready(critical, total, generation, adaptive)
    else:
        ready = _condition("Ready", False, "TrialsRunning" if started else "TrialsPending",
                           f"{done}/{total} trials done", generation)
    progressing = _condition(
        "Progressing", not complete, "TrialsRunning" if not complete else "Completed",
        f"{done}/{total} trials done" if not complete else f"all {total} trials done",
        generation)
    failed = [r for r in records if r.phase is Phase.Failed]
    if problems:
        degraded = _condition("Degraded", True, problems[0][0],
                              "; ".join(msg for _, msg in problems), generation)
    elif failed:
        degraded = _condition("Degraded", True, "TrialsFailed",
                              f"{len(failed)} trial(s) failed: "
                              + "; ".join(f"b={r.key.batch_size} seed={r.key.seed}: {r.reason}"
                                          for r in failed[:3]), generation)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "no problems", generation)
    return [ready, progressing, degraded]


def invalid_status(error: InputError | str, generation: int | None = None) -> dict:
    """The status of a sweep whose spec cannot run: Ready=False, reason InvalidSpec."""
    message = str(error)
    conds = [
        {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message},
        {"type": "Progressing", "status": "False", "reason": "InvalidSpec", "message": message},
        {"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": message},
    ]
    if generation is not None:
        for c in conds:
            c["observedGeneration"] = generation
    return {"observedGeneration": generation, "phase": "Invalid", "conditions": conds}


def merge_conditions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]],
                     now: str) -> list[dict]:
    """New conditions with lastTransitionTime kept where the status did not change."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        c = dict(c)
        o = before.get(c["type"])
        if o is not None and o.get("status") == c["status"] and o.get("lastTransitionTime"):
            c["lastTransitionTime"] = o["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = now
        out.append(c)
    return out


def transitions(old: Mapping[str, Any] | None,
                new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Events, as (type, reason, message), for what changed between two statuses."""
    before = previous_records(old)
    events = []
    for t in new.get("trials") or []:
        key = TrialKey(int(t["batchSize"]), int(t["seed"]))
        phase = as_phase(t.get("phase"))
        prev_phase = as_phase((before.get(key) or {}).get("phase")) or Phase.Pending
        if phase is prev_phase or phase is None:
            continue
        where = f"trial batch size {key.batch_size} seed {key.seed} ({t.get('job')})"
        if phase is Phase.Running and prev_phase is Phase.Pending:
            events.append(("Normal", "TrialStarted", f"{where} started"))
        elif phase is Phase.Reached:
            events.append(("Normal", "TrialReached",
                           f"{where} reached the target in {t.get('steps')} steps "
                           f"(SFO {t.get('sfo')}, from {t.get('source')})"))
        elif phase is Phase.Censored:
            events.append(("Normal", "TrialCensored",
                           f"{where} used its step budget ({t.get('steps')} steps) without "
                           f"reaching the target (from {t.get('source')})"))
        elif phase is Phase.Failed:
            events.append(("Warning", "TrialFailed", f"{where} failed: {t.get('reason')}"))
        elif phase is Phase.Pruned:
            events.append(("Normal", "TrialPruned", f"{where} pruned: {t.get('reason')}"))
    cb = new.get("criticalBatchSize") or {}
    old_phase = (old or {}).get("phase")
    if new.get("phase") == "Succeeded" and old_phase != "Succeeded":
        fitted = cb.get("fitted")
        plausible = ", ".join(map(str, cb.get("plausible") or []))
        events.append(("Normal",
                       "CriticalBatchSizeResolved" if cb.get("resolved")
                       else "CriticalBatchSizeUnresolved",
                       f"most probable critical batch size {cb.get('mostProbable')} "
                       f"(plausible: {plausible}); fitted "
                       + (f"{fitted:.4g}" if fitted is not None
                          else f"not identifiable ({cb.get('notIdentifiable')})")))
    return events
