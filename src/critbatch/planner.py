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
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from critbatch import science
from critbatch.errors import InputError
from critbatch.spec import Sweep, TrialKey

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
        )
    if obs is None:
        return _Record(key, Phase.Pending)
    result = obs.result or {}
    rec = _Record(
        key, Phase(obs.phase), obs.steps, obs.fid, obs.source, obs.reason, obs.restarts,
        _int_or_none(result.get("generator_params")), _int_or_none(result.get("dataset_size")),
        seen=obs.phase not in FINAL,  # a finished trial's Job or process needs no stopping
        job=obs.job or (prev or {}).get("job"),
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


def _best_complete_sfo(records: Iterable[_Record], seeds: int) -> float | None:
    """The least mean SFO of a batch size whose seeds all reached the target."""
    by_batch: dict[int, list[_Record]] = defaultdict(list)
    for r in records:
        by_batch[r.key.batch_size].append(r)
    best = None
    for b, group in by_batch.items():
        if len(group) == seeds and all(r.phase is Phase.Reached for r in group):
            value = b * sum(float(r.steps) for r in group) / len(group)
            best = value if best is None else min(best, value)
    return best


def sfo_lower_bound(batch_size: int, steps: Sequence[float | None]) -> float:
    """Least mean SFO a batch size can still end with, given each seed's steps so far."""
    return batch_size * sum(float(s or 0.0) for s in steps) / len(steps)


def _prune(records: dict[TrialKey, _Record], sweep: Sweep) -> list[TrialKey]:
    best = _best_complete_sfo(records.values(), sweep.seeds)
    if best is None:
        return []
    pruned = []
    for b in sorted(set(sweep.batch_sizes)):
        group = [records[TrialKey(b, s)] for s in range(sweep.seeds)]
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


def _first(values: Iterable[int | None]) -> int | None:
    return next((v for v in values if v), None)


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _critical(
    sweep: Sweep,
    records: Sequence[_Record],
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
    for w in m.warnings:
        if w.startswith("target not reached"):
            if censored:
                warnings.append("target not reached within spec.target.maxSteps at batch "
                                "size(s) " + ", ".join(map(str, sorted(censored)))
                                + ": censored, not used as measurements")
        else:
            warnings.append(w)
    if pruned:
        warnings.append("pruned by the SFO bound at batch size(s) " + ", ".join(map(str, pruned))
                        + ": they cannot beat the best measured SFO")
    failed = sorted({r.key.batch_size for r in records if r.phase is Phase.Failed})
    if failed:
        warnings.append("trials failed at batch size(s) " + ", ".join(map(str, failed))
                        + ": left out of the measurement")
    f = science.fit(trials)
    out: dict[str, Any] = {
        "measured": m.batch_size,
        "measuredSfo": _round(next((p.sfo for p in m.points if p.batch_size == m.batch_size),
                                   None)),
        "fitted": _round(f.batch_size),
        "interval": [_round(v) for v in f.interval] if f.interval else None,
        "nMin": _round(f.n_min),
        "notIdentifiable": f.reason if f.reason and any(t.reached for t in trials) else None,
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

    if m.batch_size is not None:
        if params and size:
            targets = [(t.setting(), t.generator_params, t.dataset_size) for t in sweep.estimate]
            ratio, estimates = science.estimate_targets(setting, m.batch_size, params, size,
                                                        targets)
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

    was = {k: r.phase for k, r in records.items()}
    doomed = _prune(records, sweep) if sweep.pruning.sfo_bound else []
    # Pruned before (maybe by an operator that stopped before deleting): stop it again.
    doomed += [k for k, r in records.items() if r.phase is Phase.Pruned and r.seen
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

    create = _new_jobs(sweep, records)

    # Recomputed, not accumulated: a pruned trial keeps the steps it was stopped at.
    sfo_saved = sum(k.batch_size * max(0.0, sweep.target.max_steps - float(r.steps or 0.0))
                    for k, r in records.items() if r.phase is Phase.Pruned)

    warnings: list[str] = []
    ordered = [records[k] for k in keys]
    critical = _critical(sweep, ordered, warnings, reference_noise_ratio, reference_params,
                         reference_dataset_size)

    done = sum(1 for r in ordered if r.phase in FINAL)
    total = len(ordered)
    started = any(r.seen or r.phase in FINAL for r in ordered) or bool(create)
    complete = done == total
    measured = critical["measured"]
    if complete:
        phase = "Succeeded" if measured is not None else "Failed"
    else:
        phase = "Running" if started else "Pending"

    gen = sweep.generation
    if complete and measured is not None:
        ready = _condition("Ready", True, "Measured",
                           f"measured critical batch size {measured} "
                           f"(SFO {critical['measuredSfo']:.6g}) over {total} trials", gen)
    elif complete:
        ready = _condition("Ready", False, "NoMeasurement",
                           "every trial finished but no batch size reached the target with all "
                           "its seeds: raise spec.target.maxSteps or fidThreshold", gen)
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

    jobs = {k: records[k].job or job_name(sweep.name, k) for k in keys}
    status = {
        "observedGeneration": gen,
        "phase": phase,
        "progress": f"{done}/{total}",
        "trialsDone": done,
        "trialsTotal": total,
        "sfoSaved": _round(sfo_saved, 12) or 0.0,
        "warnings": warnings,
        "trials": [
            {
                "batchSize": r.key.batch_size,
                "seed": r.key.seed,
                "job": jobs[r.key],
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
            for r in ordered
        ],
        "criticalBatchSize": critical,
        "conditions": [ready, progressing, degraded],
    }
    return Plan(create, tuple(stop), status)


def _shares_live_job(r: _Record, records: Iterable[_Record]) -> bool:
    return r.job is not None and any(
        o is not r and o.job == r.job and o.seen and o.phase in (Phase.Pending, Phase.Running)
        for o in records)


def _new_jobs(sweep: Sweep,
              records: Mapping[TrialKey, _Record]) -> tuple[tuple[TrialKey, ...], ...]:
    """Pending trials in `Sweep.trials()` order, packed `trialsPerGPU` to a Job, while fewer
    than parallelism / trialsPerGPU Jobs (at least one) run; names them in `records`."""
    per_job = sweep.trials_per_gpu
    live = {r.job or str(k) for k, r in records.items()
            if r.seen and r.phase in (Phase.Pending, Phase.Running)}
    free = max(1, sweep.parallelism // per_job) - len(live)
    waiting = [k for k, r in records.items() if r.phase is Phase.Pending and not r.seen]
    groups = [tuple(waiting[i:i + per_job]) for i in range(0, len(waiting), per_job)]
    groups = groups[:max(0, free)]
    for group in groups:
        for k in group:
            records[k].job = job_name(sweep.name, group[0])
    return tuple(groups)


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
        events.append(("Normal", "CriticalBatchSizeMeasured",
                       f"measured critical batch size {cb.get('measured')}; fitted "
                       + (f"{fitted:.4g}" if fitted is not None
                          else f"not identifiable ({cb.get('notIdentifiable')})")))
    return events
