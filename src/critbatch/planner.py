"""The sweep planner: spec + observed trials -> trials to start, trials to stop, and the status.

Pure and level-based: every call recomputes everything from what the backend sees now plus the
previous status (the memory of trials whose Job or process is gone), so a restarted operator
or runner plans exactly what the old one would have. Kubernetes Jobs and local processes are
two backends of this one planner; the math is `critbatch.science`'s.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from critbatch import posterior, science
from critbatch.errors import InputError
from critbatch.provenance import hardware_summary
from critbatch.spec import StrategyType, Sweep, TrialKey, evaluation_interval

__all__ = [
    "FINAL",
    "Observation",
    "Phase",
    "Plan",
    "TrialKey",
    "invalid_status",
    "job_name",
    "merge_conditions",
    "plan",
    "reference_from_status",
    "transitions",
]


class Phase(StrEnum):
    """A trial's phase; the last four are final (a finished trial is never rerun)."""

    Pending = "Pending"
    Running = "Running"
    Reached = "Reached"
    Censored = "Censored"
    Failed = "Failed"
    Pruned = "Pruned"


FINAL = frozenset({Phase.Reached, Phase.Censored, Phase.Failed, Phase.Pruned})


@dataclass(frozen=True)
class Observation:
    """What a backend sees of one trial now (see docs/contracts.md)."""

    key: TrialKey
    phase: Phase
    _: KW_ONLY
    steps: float | None = None
    fid: float | None = None
    result: Mapping[str, Any] | None = None
    source: str | None = None
    reason: str | None = None
    restarts: int = 0
    job: str | None = None  # the Job (or process group) running it, shared by a pod's trials


@dataclass(frozen=True)
class Plan:
    create: tuple[tuple[TrialKey, ...], ...]  # each tuple: the trials of one new Job
    stop: tuple[tuple[TrialKey, str], ...]
    status: dict


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

_NOT_LABEL = re.compile(r"[^a-z0-9-]")


def job_name(sweep_name: str, key: TrialKey) -> str:
    """`<sweep>-b<batch>-s<seed>`, a DNS-1123 label of at most 63 characters.

    When the sweep name is too long or not a label (it may hold dots), it is cut and a hash of
    the full name keeps the result unique.
    """
    suffix = f"-b{key.batch_size}-s{key.seed}"
    base = sweep_name.lower()
    clean = _NOT_LABEL.sub("-", base)
    if clean == sweep_name and len(clean) + len(suffix) <= 63:
        return clean + suffix
    digest = hashlib.sha256(sweep_name.encode()).hexdigest()[:6]
    room = 63 - len(suffix) - len(digest) - 1
    head = clean[:room].strip("-") or "sweep"
    return f"{head}-{digest}{suffix}"


# ---------------------------------------------------------------------------------------------
# Trial records
# ---------------------------------------------------------------------------------------------


@dataclass
class _Record:
    key: TrialKey
    phase: Phase
    steps: float | None = None
    fid: float | None = None
    source: str | None = None
    reason: str | None = None
    restarts: int = 0
    params: int | None = None
    dataset_size: int | None = None
    seen: bool = False  # the backend sees a Job/process for it now
    job: str | None = None
    selected_because: str | None = None  # why an adaptive sweep started it
    hardware: str | None = None  # where it ran, from its result (critbatch.provenance)


def _hardware(result: Mapping[str, Any]) -> str | None:
    line = hardware_summary(result.get("hardware")) if result.get("hardware") else "unknown"
    return None if line == "unknown" else line


def _text(value: Any, limit: int = 256) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def _previous_records(previous_status: Mapping[str, Any] | None) -> dict[TrialKey, dict]:
    out: dict[TrialKey, dict] = {}
    for t in (previous_status or {}).get("trials") or []:
        try:
            out[TrialKey(int(t["batchSize"]), int(t["seed"]))] = t
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _as_phase(value: Any) -> Phase | None:
    try:
        return Phase(value)
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


def _record(key: TrialKey, obs: Observation | None, prev: Mapping[str, Any] | None) -> _Record:
    prev_phase = _as_phase(prev.get("phase")) if prev else None
    # A pruned trial that finished before its stop landed is a real measurement: keep it.
    measured_after_prune = (
        prev_phase is Phase.Pruned
        and obs is not None
        and obs.phase in (Phase.Reached, Phase.Censored)
        and obs.steps is not None
    )
    if prev and prev_phase in FINAL and not measured_after_prune:
        # A finished or pruned trial stays so: its Job may be gone, its result is in the status.
        # Only what the result adds later (the trainer's result JSON after its metrics) fills in.
        result = (obs.result if obs is not None else None) or {}
        return _Record(
            key, prev_phase, prev.get("steps"), prev.get("fid"), prev.get("source"),
            prev.get("reason"), int(prev.get("restarts") or 0),
            _int_or_none(prev.get("generatorParams"))
            or _int_or_none(result.get("generator_params")),
            _int_or_none(prev.get("datasetSize")) or _int_or_none(result.get("dataset_size")),
            seen=obs is not None and obs.phase not in FINAL,
            job=(obs.job if obs is not None else None) or prev.get("job"),
            selected_because=prev.get("selectedBecause"),
            hardware=_hardware(result) or _text(prev.get("hardware")),
        )
    if obs is None:
        return _Record(key, Phase.Pending,
                       selected_because=(prev or {}).get("selectedBecause"))
    result = obs.result or {}
    rec = _Record(
        key, Phase(obs.phase), obs.steps, obs.fid, obs.source, obs.reason, obs.restarts,
        _int_or_none(result.get("generator_params")), _int_or_none(result.get("dataset_size")),
        seen=obs.phase not in FINAL,  # a finished trial's Job or process needs no stopping
        job=obs.job or (prev or {}).get("job"),
        selected_because=(prev or {}).get("selectedBecause"),
        hardware=_hardware(result) or _text((prev or {}).get("hardware")),
    )
    if prev and rec.phase in (Phase.Pending, Phase.Running):
        # Metrics may be unreachable for a while: keep the last progress we knew.
        if rec.steps is None:
            rec.steps = prev.get("steps")
        if rec.fid is None:
            rec.fid = prev.get("fid")
        if rec.source is None:
            rec.source = prev.get("source")
    if rec.phase in (Phase.Reached, Phase.Censored) and rec.steps is None:
        rec.phase, rec.reason = Phase.Running, rec.reason or "finished; waiting for its result"
        rec.seen = True
    return rec


# ---------------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------------


def _by_batch(records: Iterable[_Record]) -> dict[int, list[_Record]]:
    out: dict[int, list[_Record]] = defaultdict(list)
    for r in records:
        out[r.key.batch_size].append(r)
    return out


def _best_complete_sfo(groups: Mapping[int, Sequence[_Record]]) -> float | None:
    """The least mean SFO of a batch size whose trials all reached the target."""
    best = None
    for b, group in groups.items():
        if all(r.phase is Phase.Reached for r in group):
            value = b * sum(float(r.steps) for r in group) / len(group)
            best = value if best is None else min(best, value)
    return best


def sfo_lower_bound(batch_size: int, steps: Sequence[float | None]) -> float:
    """Least mean SFO a batch size can still end with, given each seed's steps so far."""
    return batch_size * sum(float(s or 0.0) for s in steps) / len(steps)


def _prune(records: Sequence[_Record]) -> list[TrialKey]:
    """Stop the open trials of a batch size whose mean SFO can no longer beat a finished one's;
    `records` are the sweep's trials (an adaptive sweep's: those it started)."""
    groups = _by_batch(records)
    best = _best_complete_sfo(groups)
    if best is None:
        return []
    pruned = []
    for b in sorted(groups):
        group = groups[b]
        open_ = [r for r in group if r.phase in (Phase.Pending, Phase.Running)]
        if not open_ or any(r.phase in (Phase.Censored, Phase.Failed) for r in group):
            continue
        bound = sfo_lower_bound(b, [r.steps for r in group])
        if bound >= best:
            for r in open_:
                was_running = r.seen
                r.phase = Phase.Pruned
                r.reason = (f"SFO lower bound {bound:.6g} at batch size {b} >= best finished "
                            f"SFO {best:.6g}: cannot win")
                if was_running:
                    pruned.append(r.key)
    return pruned


# ---------------------------------------------------------------------------------------------
# Science
# ---------------------------------------------------------------------------------------------


def _science_trials(records: Iterable[_Record]) -> list[science.Trial]:
    """Reached trials are measurements; censored and pruned ones are right-censored."""
    out = []
    for r in records:
        if r.phase is Phase.Reached and r.steps:
            out.append(science.Trial(r.key.batch_size, float(r.steps), True, r.key.seed))
        elif r.phase in (Phase.Censored, Phase.Pruned):
            out.append(science.Trial(r.key.batch_size, float(r.steps or 0.0), False, r.key.seed))
    return out


def _evidence(records: Iterable[_Record], eval_every: int) -> list[posterior.Evidence]:
    """What each trial says of its N(b): reached between its last two evaluations, or not by its
    last evaluation (censored, pruned, or still running: all of them right-censored there)."""
    out = []
    for r in records:
        if r.phase is Phase.Reached and r.steps:
            out.append(posterior.Evidence(batch_size=r.key.batch_size, steps=float(r.steps),
                                          reached=True, eval_every=eval_every, seed=r.key.seed))
        elif r.phase in (Phase.Censored, Phase.Pruned, Phase.Running) and r.steps:
            last_eval = float(r.steps) if r.phase is Phase.Censored \
                else eval_every * math.floor(float(r.steps) / eval_every)
            if last_eval > 0:
                out.append(posterior.Evidence(batch_size=r.key.batch_size, steps=last_eval,
                                              reached=False, eval_every=eval_every,
                                              seed=r.key.seed))
    return out


def _first(values: Iterable[int | None]) -> int | None:
    return next((v for v in values if v), None)


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _reach_fraction(records: Iterable[_Record]) -> dict[int, float]:
    """Per batch size, the fraction of its trials that ran to the end and reached the target
    (pruned and running ones did not run to the end)."""
    ended = _by_batch(r for r in records if r.phase in (Phase.Reached, Phase.Censored))
    return {b: sum(r.phase is Phase.Reached for r in group) / len(group)
            for b, group in sorted(ended.items())}


def _answer(post: posterior.Posterior, reach: Mapping[int, float]) -> dict[str, Any]:
    """The posterior's answer as status fields (batch sizes as string keys, for JSON)."""
    return {
        "mostProbable": post.most_probable,
        "plausible": list(post.plausible) if post.most_probable is not None else None,
        "probabilities": ({str(b): _round(p, 4) for b, p in sorted(post.probabilities.items())}
                          if post.probabilities else None),
        "resolved": post.resolved,
        "confidence": post.confidence,
        "reachFraction": {str(b): _round(f, 4) for b, f in reach.items()} or None,
        "fitted": _round(post.fitted),
        "interval": [_round(v) for v in post.interval] if post.interval else None,
        "nMin": _round(post.n_min),
        "notIdentifiable": post.reason,
    }


def _critical(
    sweep: Sweep,
    records: Sequence[_Record],
    post: posterior.Posterior,
    warnings: list[str],
    reference_noise_ratio: float | None,
    reference_params: int | None,
    reference_dataset_size: int | None,
) -> dict:
    trials = _science_trials(records)
    m = science.measure(trials)
    # science names pruned batch sizes "censored" (they are, to the argmin); say which is which.
    censored = {r.key.batch_size for r in records if r.phase is Phase.Censored}
    pruned = sorted(set(m.censored) - censored)
    if censored:
        warnings.append("target not reached within spec.target.maxSteps by some seeds at batch "
                        "size(s) " + ", ".join(map(str, sorted(censored)))
                        + ": censored, counted as evidence that N(b) exceeds the budget")
    if pruned:
        warnings.append("pruned by the SFO bound at batch size(s) " + ", ".join(map(str, pruned))
                        + ": they cannot beat the best measured SFO")
    failed = sorted({r.key.batch_size for r in records if r.phase is Phase.Failed})
    if failed:
        warnings.append("trials failed at batch size(s) " + ", ".join(map(str, failed))
                        + ": left out of the evidence")
    kinds = sorted({r.hardware for r in records if r.hardware})
    if len(kinds) > 1:
        warnings.append("trials ran on different hardware, so their N(b) may differ for reasons "
                        "other than the batch size: " + "; ".join(
                            f"{kind} (b=" + ", ".join(
                                f"{r.key.batch_size}/s{r.key.seed}" for r in records
                                if r.hardware == kind) + ")" for kind in kinds)
                        + ". A node selector keeps a sweep on one kind of node")
    reach = _reach_fraction(records)
    stalled = [b for b, f in reach.items() if 0 < f < 1]
    if stalled:
        warnings.append("some seeds did not reach the target where others did, at batch "
                        "size(s) " + ", ".join(map(str, stalled)) + ": see reachFraction")
    out: dict[str, Any] = {
        **_answer(post, reach),
        "measured": m.batch_size,
        "measuredSfo": _round(next((p.sfo for p in m.points if p.batch_size == m.batch_size),
                                   None)),
        "predicted": None,
        "predictedGrid": None,
        "noiseRatio": None,
        "generatorParams": None,
        "datasetSize": None,
        "estimates": [],
    }
    params = _first(r.params for r in records)
    size = sweep.trainer.dataset.known_size or _first(r.dataset_size for r in records)
    out["generatorParams"], out["datasetSize"] = params, size
    setting = sweep.optimizer.setting()

    ref = sweep.reference
    if reference_noise_ratio is None and ref is not None:
        reference_noise_ratio = ref.noise_ratio
    if ref is not None:
        reference_params = reference_params or ref.generator_params
        reference_dataset_size = reference_dataset_size or ref.dataset_size
    if reference_noise_ratio is not None:
        p, s = params or reference_params, size or reference_dataset_size
        if p and s:
            value = science.estimate_batch_size(reference_noise_ratio, setting, p, s)
            out["predicted"] = _round(value)
            out["predictedGrid"] = science.snap_to_grid(value, sorted(sweep.batch_sizes))
            if params and reference_params and params != reference_params:
                warnings.append(f"predicted: this sweep's generator has {params} parameters, "
                                f"the reference's {reference_params}: the noise ratio carries "
                                "over to the same architecture only (Proposition 3.4)")
        else:
            warnings.append("predicted: needs the generator's parameter count and the dataset "
                            "size (from a trial, the reference, or spec.reference)")
    elif ref is not None and ref.sweep:
        warnings.append(f"predicted: reference sweep {ref.sweep!r} has no noise ratio yet")

    if post.most_probable is not None:
        if params and size:
            targets = [(t.setting(), t.generator_params, t.dataset_size) for t in sweep.estimate]
            ratio, estimates = science.estimate_targets(setting, post.most_probable, params,
                                                        size, targets)
            out["noiseRatio"] = _round(ratio)
            for t, e in zip(sweep.estimate, estimates, strict=True):
                out["estimates"].append({
                    "name": t.name or f"{t.optimizer}-lr{t.learning_rate:g}",
                    "optimizer": t.optimizer,
                    "learningRate": t.learning_rate,
                    "beta1": t.beta1,
                    "beta2": t.beta2,
                    "datasetSize": e.dataset_size,
                    "generatorParams": e.params,
                    "batchSize": _round(e.batch_size),
                    "gridBatchSize": e.grid_batch_size,
                })
        else:
            warnings.append("noiseRatio: needs the generator's parameter count and the dataset "
                            "size, which come with a trial's result")
    return out


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}


def plan(
    sweep: Sweep,
    observations: Mapping[TrialKey, Observation],
    *,
    reference_noise_ratio: float | None = None,
    reference_params: int | None = None,
    reference_dataset_size: int | None = None,
    previous_status: Mapping[str, Any] | None = None,
    problems: Sequence[tuple[str, str]] = (),
) -> Plan:
    """What to start, what to stop, and the status, from the spec and what is observed now."""
    keys = sweep.trials()
    prev = _previous_records(previous_status)
    records = {k: _record(k, observations.get(k), prev.get(k)) for k in keys}
    adaptive = sweep.strategy.type is StrategyType.adaptive
    # An adaptive sweep's trials are those it started: seen by the backend or in its status.
    chosen = [k for k in keys if not adaptive or k in observations or k in prev]

    was = {k: r.phase for k, r in records.items()}
    doomed = _prune([records[k] for k in chosen]) if sweep.pruning.sfo_bound else []
    # Pruned before (maybe by an operator that stopped before deleting): stop it again.
    doomed += [k for k in chosen if records[k].phase is Phase.Pruned and records[k].seen
               and k not in doomed]
    stop: list[tuple[TrialKey, str]] = []
    for k in doomed:
        r = records[k]
        if _shares_live_job(r, records.values()):
            # Stopping its Job would stop trials that can still win: it runs on with them (one
            # pruned before stays pruned).
            if was[k] not in FINAL:
                r.phase = was[k]
                r.reason = f"cannot win, runs on with the other trials of Job {r.job}"
        else:
            stop.append((k, r.reason or "pruned"))

    grid = tuple(sorted(sweep.batch_sizes))
    eval_every = evaluation_interval(sweep)
    post = posterior.infer(_evidence((records[k] for k in chosen), eval_every), grid,
                           confidence=sweep.strategy.confidence)
    if adaptive:
        for key, why in _choose(sweep, records, chosen, post):
            records[key].selected_because = why
            chosen.append(key)
        chosen.sort()
    create = _new_jobs(sweep, records, chosen)

    # Recomputed, not accumulated: a pruned trial keeps the steps it was stopped at.
    sfo_saved = sum(k.batch_size * max(0.0, sweep.target.max_steps - float(records[k].steps
                                                                          or 0.0))
                    for k in chosen if records[k].phase is Phase.Pruned)

    warnings: list[str] = []
    ordered = [records[k] for k in chosen]
    critical = _critical(sweep, ordered, post, warnings, reference_noise_ratio,
                         reference_params, reference_dataset_size)

    done = sum(1 for r in ordered if r.phase in FINAL)
    total = len(ordered)
    started = any(r.seen or r.phase in FINAL for r in ordered) or bool(create)
    complete = done == total and not create
    answer = critical["mostProbable"]
    missing = _failed_where_it_matters(ordered, critical)
    if complete:
        phase = "Succeeded" if answer is not None and not missing else "Failed"
    else:
        phase = "Running" if started else "Pending"

    gen = sweep.generation
    if complete and missing:
        ready = _condition("Ready", False, "TrialsFailed",
                           "trials failed at batch size(s) " + ", ".join(map(str, missing))
                           + ", which could still be the answer (plausible, or no other trial "
                           "there finished): the answer is not sound until they are rerun", gen)
    elif complete:
        ready = _ready(critical, total, gen, adaptive)
    else:
        ready = _condition("Ready", False, "TrialsRunning" if started else "TrialsPending",
                           f"{done}/{total} trials done", gen)
    progressing = _condition(
        "Progressing", not complete, "TrialsRunning" if not complete else "Completed",
        f"{done}/{total} trials done" if not complete else f"all {total} trials done", gen)
    failed = [r for r in ordered if r.phase is Phase.Failed]
    if problems:
        degraded = _condition("Degraded", True, problems[0][0],
                              "; ".join(msg for _, msg in problems), gen)
    elif failed:
        degraded = _condition("Degraded", True, "TrialsFailed",
                              f"{len(failed)} trial(s) failed: "
                              + "; ".join(f"b={r.key.batch_size} seed={r.key.seed}: {r.reason}"
                                          for r in failed[:3]), gen)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "no problems", gen)

    status = {
        "observedGeneration": gen,
        "phase": phase,
        "progress": f"{done}/{total}",
        "trialsDone": done,
        "trialsTotal": total,
        "sfoSaved": _round(sfo_saved, 12) or 0.0,
        "warnings": warnings,
        "trials": [_trial_status(sweep, r) for r in ordered],
        "criticalBatchSize": critical,
        "conditions": [ready, progressing, degraded],
    }
    if adaptive:
        status["trialsMax"] = sweep.strategy.max_trials or len(keys)
    return Plan(create, tuple(stop), status)


def _trial_status(sweep: Sweep, r: _Record) -> dict[str, Any]:
    out = {
        "batchSize": r.key.batch_size,
        "seed": r.key.seed,
        "job": r.job or job_name(sweep.name, r.key),
        "phase": r.phase.value,
        "steps": _num(r.steps),
        "sfo": _num(r.key.batch_size * r.steps) if r.steps is not None else None,
        "fid": _num(r.fid),
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


def _failed_where_it_matters(records: Sequence[_Record], critical: Mapping[str, Any]) -> list[int]:
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
                          "spec.target.maxSteps or fidThreshold", generation)
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


def _shares_live_job(r: _Record, records: Iterable[_Record]) -> bool:
    return r.job is not None and any(
        o is not r and o.job == r.job and o.seen and o.phase in (Phase.Pending, Phase.Running)
        for o in records)


def _free_jobs(sweep: Sweep, records: Mapping[TrialKey, _Record]) -> int:
    """Jobs that may start now: parallelism / trialsPerGPU (at least one) less those running."""
    live = {r.job or str(k) for k, r in records.items()
            if r.seen and r.phase in (Phase.Pending, Phase.Running)}
    return max(0, max(1, sweep.parallelism // sweep.trials_per_gpu) - len(live))


def _new_jobs(sweep: Sweep, records: Mapping[TrialKey, _Record],
              chosen: Sequence[TrialKey]) -> tuple[tuple[TrialKey, ...], ...]:
    """Pending trials of `chosen` in `Sweep.trials()` order, packed `trialsPerGPU` to a Job, as
    many Jobs as may start; names them in `records`."""
    per_job = sweep.trials_per_gpu
    waiting = [k for k in chosen if records[k].phase is Phase.Pending and not records[k].seen]
    groups = [tuple(waiting[i:i + per_job]) for i in range(0, len(waiting), per_job)]
    groups = groups[:_free_jobs(sweep, records)]
    for group in groups:
        for k in group:
            records[k].job = job_name(sweep.name, group[0])
    return tuple(groups)


# ---------------------------------------------------------------------------------------------
# The adaptive strategy
# ---------------------------------------------------------------------------------------------

UNREACHABLE = 0.99  # a batch size this probably at or below B/K gets no more trials
THOMPSON_DRAWS = 256


def initial_design(grid: Sequence[int]) -> tuple[int, ...]:
    """Every other grid point, both ends included: where an adaptive sweep puts its first seeds."""
    grid = sorted(grid)
    return tuple(sorted({*grid[::2], grid[-1]}))


def _choose(sweep: Sweep, records: Mapping[TrialKey, _Record], chosen: Sequence[TrialKey],
            post: posterior.Posterior) -> list[tuple[TrialKey, str]]:
    """The trials an adaptive sweep adds now, each with why: the initial design first, then
    Thompson sampling of the SFO argmin, while its most probable batch size holds less than
    the confidence, within maxTrials and the free Jobs.

    The sampler's random numbers are seeded from what has been observed, so a restarted
    operator or runner chooses what the old one would have.
    """
    cap = sweep.strategy.max_trials or len(sweep.trials())
    waiting = sum(1 for k in chosen if records[k].phase is Phase.Pending and not records[k].seen)
    room = min(cap - len(chosen), _free_jobs(sweep, records) * sweep.trials_per_gpu - waiting)
    if room <= 0:
        return []
    used = Counter(k.batch_size for k in chosen)
    open_ = {k.batch_size for k in chosen if records[k].phase in (Phase.Pending, Phase.Running)}
    picks: list[tuple[TrialKey, str]] = []

    def take(b: int, why: str) -> None:
        picks.append((TrialKey(b, used[b]), why))
        used[b] += 1
        open_.add(b)

    for b in initial_design(sweep.batch_sizes):
        if used[b] == 0 and len(picks) < room:
            take(b, "initial design: one seed on every other batch size of the grid")
    if picks or (post.most_probable is not None and post.resolved):
        return picks
    has_room = [b for b in sorted(sweep.batch_sizes) if used[b] < sweep.seeds]
    if post.most_probable is None:
        if open_:
            return picks  # the first results decide where to look
        # Nothing has reached the target: larger batches need fewer steps, try them first.
        for b in reversed(has_room):
            if len(picks) < room and b not in open_:
                take(b, "no trial has reached the target yet: the largest untried batch size")
        return picks
    candidates = [b for b in has_room if post.unreachable.get(b, 0.0) < UNREACHABLE]
    if not candidates:
        return picks
    rng = np.random.default_rng(_choice_seed(sweep, records, chosen))
    draws = post.sample_argmins(rng, THOMPSON_DRAWS)
    # Prefer batch sizes with no trial running: a running one's result is already on its way.
    for allow_open in (False, True):
        for b in draws:
            if len(picks) >= room:
                return picks
            if b in candidates and used[b] < sweep.seeds and (allow_open or b not in open_):
                take(b, f"Thompson sampling: probability {post.probabilities.get(b, 0.0):.3g} "
                        "of being the SFO argmin")
    return picks


def _choice_seed(sweep: Sweep, records: Mapping[TrialKey, _Record],
                 chosen: Sequence[TrialKey]) -> int:
    state = repr((sweep.name, sorted((k.batch_size, k.seed, records[k].phase.value,
                                      records[k].steps) for k in chosen)))
    return int.from_bytes(hashlib.sha256(state.encode()).digest()[:8], "big")


def _num(x: float | None) -> float | int | None:
    if x is None or not math.isfinite(float(x)):
        return None
    x = float(x)
    return int(x) if x.is_integer() else x


def reference_from_status(
    status: Mapping[str, Any] | None,
) -> tuple[float | None, int | None, int | None]:
    """A reference sweep's (noise ratio, generator params, dataset size) from its status.

    What `plan`'s reference_* arguments take, so the operator (a sweep in the namespace) and
    `critbatch run` (a finished local run) read a reference the same way; None where absent.
    """
    cb = (status or {}).get("criticalBatchSize") or {}
    ratio = cb.get("noiseRatio")
    ok = isinstance(ratio, int | float) and not isinstance(ratio, bool) \
        and math.isfinite(ratio) and ratio > 0
    return (float(ratio) if ok else None, _int_or_none(cb.get("generatorParams")),
            _int_or_none(cb.get("datasetSize")))


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
    before = _previous_records(old)
    events = []
    for t in new.get("trials") or []:
        key = TrialKey(int(t["batchSize"]), int(t["seed"]))
        phase = _as_phase(t.get("phase"))
        prev_phase = _as_phase((before.get(key) or {}).get("phase")) or Phase.Pending
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
