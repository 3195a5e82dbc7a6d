"""The sweep planner: spec + observed trials -> trials to start, trials to stop, and the status.

Pure and level-based: every call recomputes everything from what the backend sees at the call
plus the previous status (the memory of trials whose Job or process is gone), so a restarted
operator or runner plans exactly what the old one would have. Kubernetes Jobs and local
processes are two backends of this one planner; its parts are in `critbatch.planning`, the
math in `critbatch.science` and `critbatch.posterior`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from critbatch import posterior
from critbatch.numbers import json_number, significant
from critbatch.planning.adaptive import choose, initial_design
from critbatch.planning.answer import (
    NO_REFERENCE,
    ReferenceStatus,
    critical_batch_size,
    evidence,
    reference_from_status,
)
from critbatch.planning.conditions import (
    failed_where_it_matters,
    invalid_status,
    merge_conditions,
    sweep_conditions,
    transitions,
)
from critbatch.planning.jobs import job_name, new_jobs, shares_live_job
from critbatch.planning.pruning import prune
from critbatch.planning.trials import (
    FINAL,
    Observation,
    Phase,
    TrialRecord,
    previous_records,
    trial_record,
)
from critbatch.spec import StrategyType, Sweep, evaluation_interval
from critbatch.vocabulary import TrialKey

__all__ = [
    "FINAL",
    "NO_REFERENCE",
    "Observation",
    "Phase",
    "Plan",
    "ReferenceStatus",
    "initial_design",
    "invalid_status",
    "job_name",
    "merge_conditions",
    "plan",
    "reference_from_status",
    "transitions",
]


@dataclass(frozen=True)
class Plan:
    create: tuple[tuple[TrialKey, ...], ...]  # each tuple: the trials of one new Job
    stop: tuple[tuple[TrialKey, str], ...]
    status: dict


def plan(
    sweep: Sweep,
    observations: Mapping[TrialKey, Observation],
    *,
    reference: ReferenceStatus = NO_REFERENCE,
    previous_status: Mapping[str, Any] | None = None,
    problems: Sequence[tuple[str, str]] = (),
) -> Plan:
    """What to start, what to stop, and the status, from the spec and what is observed now."""
    keys = sweep.trials()
    prev = previous_records(previous_status)
    records = {k: trial_record(k, observations.get(k), prev.get(k)) for k in keys}
    adaptive = sweep.strategy.type is StrategyType.adaptive
    # An adaptive sweep's trials are those it started: seen by the backend or in its status.
    chosen = [k for k in keys if not adaptive or k in observations or k in prev]

    stop = _stops(sweep, records, chosen)
    eval_every = evaluation_interval(sweep)
    post = posterior.infer(evidence((records[k] for k in chosen), eval_every),
                           tuple(sorted(sweep.batch_sizes)),
                           confidence=sweep.strategy.confidence,
                           budget=sweep.target.max_steps)
    if adaptive:
        for key, why in choose(sweep, records, chosen, post):
            records[key].selected_because = why
            chosen.append(key)
        chosen.sort()
    create = new_jobs(sweep, records, chosen)

    # Recomputed, not accumulated: a pruned trial keeps the steps it was stopped at.
    sfo_saved = sum(k.batch_size * max(0.0, sweep.target.max_steps - float(records[k].steps
                                                                          or 0.0))
                    for k in chosen if records[k].phase is Phase.Pruned)

    ordered = [records[k] for k in chosen]
    critical, warnings = critical_batch_size(
        sweep, ordered, post, reference=reference, previous_status=previous_status)

    done = sum(1 for r in ordered if r.phase in FINAL)
    total = len(ordered)
    started = any(r.seen or r.phase in FINAL for r in ordered) or bool(create)
    complete = done == total and not create
    if complete:
        sound = critical["mostProbable"] is not None \
            and not failed_where_it_matters(ordered, critical)
        phase = "Succeeded" if sound else "Failed"
    else:
        phase = "Running" if started else "Pending"

    status = {
        "observedGeneration": sweep.generation,
        "phase": phase,
        "progress": f"{done}/{total}",
        "trialsDone": done,
        "trialsTotal": total,
        "sfoSaved": significant(sfo_saved, 12) or 0.0,
        "target": {"metric": sweep.target.metric, "threshold": sweep.target.threshold,
                   "goal": sweep.target.goal.value},
        "warnings": warnings,
        "trials": [_trial_status(sweep, r) for r in ordered],
        "criticalBatchSize": critical,
        "conditions": sweep_conditions(ordered, critical, problems=problems, started=started,
                                       complete=complete, generation=sweep.generation,
                                       adaptive=adaptive),
    }
    if adaptive:
        status["trialsMax"] = sweep.strategy.max_trials or len(keys)
    return Plan(create, tuple(stop), status)


def _stops(sweep: Sweep, records: Mapping[TrialKey, TrialRecord],
           chosen: Sequence[TrialKey]) -> list[tuple[TrialKey, str]]:
    """The running trials to stop, with why: those pruned now, and those pruned before (maybe by
    an operator that stopped before deleting), unless they share a Job with a trial that can
    still win."""
    was = {k: r.phase for k, r in records.items()}
    doomed = prune([records[k] for k in chosen]) if sweep.pruning.sfo_bound else []
    doomed += [k for k in chosen if records[k].phase is Phase.Pruned and records[k].seen
               and k not in doomed]
    stop: list[tuple[TrialKey, str]] = []
    for k in doomed:
        r = records[k]
        if shares_live_job(r, records.values()):
            # Stopping its Job would stop trials that can still win: it runs on with them (one
            # pruned before stays pruned).
            if was[k] not in FINAL:
                r.phase = was[k]
                r.reason = f"cannot win, runs on with the other trials of Job {r.job}"
        else:
            stop.append((k, r.reason or "pruned"))
    return stop


def _trial_status(sweep: Sweep, r: TrialRecord) -> dict[str, Any]:
    out = {
        "batchSize": r.key.batch_size,
        "seed": r.key.seed,
        "job": r.job or job_name(sweep.name, r.key),
        "phase": r.phase.value,
        "steps": json_number(r.steps),
        "sfo": json_number(r.key.batch_size * r.steps) if r.steps is not None else None,
        "value": json_number(r.value),
        "source": r.source,
        "reason": r.reason,
        "restarts": r.restarts,
        "generatorParams": r.params,
        "datasetSize": r.dataset_size,
    }
    if r.selected_because is not None:
        out["selectedBecause"] = r.selected_because
    if r.hardware is not None:
        out["hardware"] = r.hardware
    return out
