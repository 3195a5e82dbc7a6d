"""The answer a status gives: the critical batch size from the posterior (most probable,
plausible set, fitted), the measured one, the reach fraction, the prediction from a reference
and the estimates for other settings, with the warnings that qualify them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from critbatch import posterior, science
from critbatch.numbers import finite_float, positive_int, significant
from critbatch.planning.trials import Phase, TrialRecord, by_batch
from critbatch.protocol import result_optimizer
from critbatch.science import OptimizerSetting
from critbatch.spec import Sweep


def science_trials(records: Iterable[TrialRecord]) -> list[science.Trial]:
    """Reached trials are measurements; censored and pruned ones are right-censored."""
    out = []
    for r in records:
        if r.phase is Phase.Reached and r.steps:
            out.append(science.Trial(batch_size=r.key.batch_size, steps=float(r.steps),
                                     reached=True, seed=r.key.seed))
        elif r.phase in (Phase.Censored, Phase.Pruned):
            out.append(science.Trial(batch_size=r.key.batch_size, steps=float(r.steps or 0.0),
                                     reached=False, seed=r.key.seed))
    return out


def evidence(records: Iterable[TrialRecord], eval_every: int) -> list[posterior.Evidence]:
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


def reach_fraction(records: Iterable[TrialRecord]) -> dict[int, float]:
    """Per batch size, the fraction of its trials that ran to the end and reached the target
    (pruned and running ones did not run to the end)."""
    ended = by_batch(r for r in records if r.phase in (Phase.Reached, Phase.Censored))
    return {b: sum(r.phase is Phase.Reached for r in group) / len(group)
            for b, group in sorted(ended.items())}


class ReferenceStatus(NamedTuple):
    """What a reference sweep's status gives Proposition 3.4; None where absent."""

    noise_ratio: float | None
    params: int | None
    dataset_size: int | None
    noise_ratio_interval: tuple[float, float] | None = None


NO_REFERENCE = ReferenceStatus(None, None, None)


def _positive_interval(value: Any) -> tuple[float, float] | None:
    """[low, high] with 0 < low <= high, both finite; else None."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return None
    low, high = (finite_float(v) for v in value)
    if low is None or high is None or not 0 < low <= high:
        return None
    return low, high


def reference_from_status(status: Mapping[str, Any] | None) -> ReferenceStatus:
    """A reference sweep's noise ratio (with its interval), generator params and dataset size.

    What `plan`'s reference_* arguments take, so the operator (a sweep in the namespace) and
    `critbatch run` (a finished local run) read a reference the same way.
    """
    cb = (status or {}).get("criticalBatchSize") or {}
    ratio = finite_float(cb.get("noiseRatio"))
    ratio = ratio if ratio is not None and ratio > 0 else None
    return ReferenceStatus(ratio, positive_int(cb.get("generatorParams")),
                           positive_int(cb.get("datasetSize")),
                           _positive_interval(cb.get("noiseRatioInterval")) if ratio else None)


def _pair(ends: Sequence[float] | None) -> list[float] | None:
    """An interval for the status: both ends as numbers, or None (an end that overflowed
    would be a null the CRD's schema refuses)."""
    shown = [x for x in map(significant, ends or ()) if x is not None]
    return shown if len(shown) == len(ends or ()) == 2 else None


def _listed(sizes: Iterable[int]) -> str:
    return ", ".join(map(str, sizes))


def _posterior_fields(post: posterior.Posterior, reach: Mapping[int, float]) -> dict[str, Any]:
    """The posterior's answer as status fields (batch sizes as string keys, for JSON)."""
    return {
        "mostProbable": post.most_probable,
        "plausible": list(post.plausible) if post.most_probable is not None else None,
        "probabilities": ({str(b): significant(p, 4) for b, p in sorted(post.probabilities.items())}
                          if post.probabilities else None),
        "resolved": post.resolved,
        "confidence": post.confidence,
        "reachFraction": {str(b): significant(f, 4) for b, f in reach.items()} or None,
        "fitted": significant(post.fitted),
        "interval": _pair(post.interval),
        "nMin": significant(post.n_min),
        "notIdentifiable": post.reason,
    }


def _evidence_warnings(records: Sequence[TrialRecord], measured_censored: Iterable[int],
                       reach: Mapping[int, float]) -> list[str]:
    """What qualifies the evidence: censored, pruned and failed batch sizes, mixed hardware,
    seeds that disagree on reaching the target."""
    warnings = []
    # science names pruned batch sizes "censored" (they are, to the argmin); say which is which.
    censored = {r.key.batch_size for r in records if r.phase is Phase.Censored}
    pruned = sorted(set(measured_censored) - censored)
    if censored:
        warnings.append("target not reached within spec.target.maxSteps by some seeds at batch "
                        "size(s) " + _listed(sorted(censored))
                        + ": censored, counted as evidence that N(b) exceeds the budget")
    if pruned:
        warnings.append("pruned by the SFO bound at batch size(s) " + _listed(pruned)
                        + ": they cannot beat the best measured SFO")
    failed = sorted({r.key.batch_size for r in records if r.phase is Phase.Failed})
    if failed:
        warnings.append("trials failed at batch size(s) " + _listed(failed)
                        + ": left out of the evidence")
    kinds = sorted({r.hardware for r in records if r.hardware})
    if len(kinds) > 1:
        warnings.append("trials ran on different hardware, so their N(b) may differ for reasons "
                        "other than the batch size: " + "; ".join(
                            f"{kind} (b=" + ", ".join(
                                f"{r.key.batch_size}/s{r.key.seed}" for r in records
                                if r.hardware == kind) + ")" for kind in kinds)
                        + ". A node selector keeps a sweep on one kind of node")
    stalled = [b for b, f in reach.items() if 0 < f < 1]
    if stalled:
        warnings.append("some seeds did not reach the target where others did, at batch "
                        "size(s) " + _listed(stalled) + " (see reachFraction): the most "
                        "probable b* counts a seed that stalls as a run of "
                        "spec.target.maxSteps that is run again; the fitted b*, of the N(b) of "
                        "the seeds that reached, does not")
    return warnings


def optimizer_setting(sweep: Sweep, records: Sequence[TrialRecord],
                      previous: Mapping[str, Any] | None = None) -> OptimizerSetting | str:
    """The setting Proposition 3.4 speaks of: the spec's (built-in trainer), else the one a
    custom trainer's results report (or an earlier status kept), else why there is none."""
    if sweep.optimizer is not None:
        return sweep.optimizer.setting()
    reported = [r.optimizer for r in records if r.optimizer is not None]
    for o in reported:
        if isinstance(o, OptimizerSetting):
            return o
    kept = ((previous or {}).get("criticalBatchSize") or {}).get("optimizer")
    if isinstance(kept, dict):
        o = result_optimizer({"optimizer": {"name": kept.get("name"),
                                            "learning_rate": kept.get("learningRate"),
                                            "beta1": kept.get("beta1"),
                                            "beta2": kept.get("beta2")}})
        if isinstance(o, OptimizerSetting):
            return o
    return reported[0] if reported else "the trainer reports no optimizer"


def _setting_status(setting: OptimizerSetting | str) -> dict[str, Any] | None:
    if isinstance(setting, str):
        return None
    return {"name": setting.optimizer, "learningRate": setting.lr, "beta1": setting.beta1,
            "beta2": setting.beta2}


def _prediction(sweep: Sweep, setting: OptimizerSetting | str, *, params: int | None,
                size: int | None, reference: ReferenceStatus,
                ) -> tuple[dict[str, Any], list[str]]:
    """b* predicted from a reference's noise ratio (Proposition 3.4), with the interval its
    noise ratio's interval gives, and its warnings."""
    out: dict[str, Any] = {}
    warnings = []
    ref = sweep.reference
    reference_noise_ratio, reference_params, reference_dataset_size, ratio_interval = reference
    if reference_noise_ratio is None and ref is not None:
        reference_noise_ratio, ratio_interval = ref.noise_ratio, None
    if ref is not None:
        reference_params = reference_params or ref.generator_params
        reference_dataset_size = reference_dataset_size or ref.dataset_size
    if reference_noise_ratio is not None:
        p, s = params or reference_params, size or reference_dataset_size
        if isinstance(setting, str):
            warnings.append(f"predicted: skipped, {setting} (Proposition 3.4 needs the "
                            "optimizer's learning rate and betas)")
        elif p and s and not math.isfinite(
                value := science.estimate_batch_size(reference_noise_ratio, setting, p, s)):
            warnings.append(f"predicted: skipped, Proposition 3.4 overflows with the noise "
                            f"ratio {reference_noise_ratio:g} and this sweep's optimizer")
        elif p and s:
            out["predicted"] = significant(value)
            out["predictedGrid"] = science.snap_to_grid(value, sorted(sweep.batch_sizes))
            if ratio_interval is not None:
                out["predictedInterval"] = _pair(
                    [science.estimate_batch_size(r, setting, p, s) for r in ratio_interval])
            if params and reference_params and params != reference_params:
                warnings.append(f"predicted: this sweep's generator has {params} parameters, "
                                f"the reference's {reference_params}: the noise ratio carries "
                                "over to the same architecture only (Proposition 3.4)")
        else:
            warnings.append("predicted: needs the trained network's parameter count and the "
                            "dataset size (from a trial, the reference, or spec.reference)")
    elif ref is not None and ref.sweep:
        warnings.append(f"predicted: reference sweep {ref.sweep!r} has no noise ratio yet")
    return out, warnings


def _estimates(sweep: Sweep, setting: OptimizerSetting, best: int, params: int, size: int,
               interval: tuple[float, float] | None) -> dict[str, Any]:
    """This sweep's noise ratio and b* estimated for each of spec.estimate's settings, each with
    the interval that the fitted b*'s credible interval (widened to hold `best`, the grid point
    the ratio comes from) gives it."""
    targets = [(t.setting(), t.generator_params, t.dataset_size) for t in sweep.estimate]
    ends = science.widen(interval, best) if interval else None
    ratio, estimates = science.estimate_targets(setting, best, params, size, targets,
                                                reference_interval=ends)
    rows = [{
        "name": t.name or f"{t.optimizer}-lr{t.learning_rate:g}",
        "optimizer": t.optimizer,
        "learningRate": t.learning_rate,
        "beta1": t.beta1,
        "beta2": t.beta2,
        "datasetSize": e.dataset_size,
        "generatorParams": e.params,
        "batchSize": significant(e.batch_size),
        "gridBatchSize": e.grid_batch_size,
        "batchSizeInterval": _pair(e.interval),
    } for t, e in zip(sweep.estimate, estimates, strict=True)]
    return {"noiseRatio": significant(ratio),
            "noiseRatioInterval": _pair(
                [science.noise_ratio(setting, b, params, size) for b in ends or ()]),
            "estimates": rows}


def critical_batch_size(
    sweep: Sweep,
    records: Sequence[TrialRecord],
    post: posterior.Posterior,
    *,
    reference: ReferenceStatus = NO_REFERENCE,
    previous_status: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The status's `criticalBatchSize` and the warnings that go with it."""
    m = science.measure(science_trials(records))
    reach = reach_fraction(records)
    warnings = _evidence_warnings(records, m.censored, reach)
    params = next((r.params for r in records if r.params), None)
    size = sweep.trainer.dataset.known_size or next(
        (r.dataset_size for r in records if r.dataset_size), None)
    out: dict[str, Any] = {
        **_posterior_fields(post, reach),
        "measured": m.batch_size,
        "measuredSfo": significant(next((p.sfo for p in m.points
                                         if p.batch_size == m.batch_size), None)),
        "predicted": None,
        "predictedGrid": None,
        "predictedInterval": None,
        "noiseRatio": None,
        "noiseRatioInterval": None,
        "generatorParams": params,
        "datasetSize": size,
        "optimizer": None,
        "estimates": [],
    }
    setting = optimizer_setting(sweep, records, previous_status)
    out["optimizer"] = _setting_status(setting)
    predicted, more = _prediction(sweep, setting, params=params, size=size, reference=reference)
    out.update(predicted)
    warnings += more
    if post.most_probable is not None:
        if isinstance(setting, str):
            warnings.append(f"noiseRatio and estimates: skipped, {setting} (Proposition 3.4 "
                            "needs the optimizer's learning rate and betas)")
        elif params and size:
            b_star = post.least_sfo or post.most_probable
            out.update(_estimates(sweep, setting, b_star, params, size, post.interval))
            if b_star != post.most_probable:
                warnings.append(f"noiseRatio: from b = {b_star}, where N(b)*b is least "
                                "(the b* of Proposition 3.4), not from the most probable "
                                f"{post.most_probable}, which counts what stalled seeds cost")
        else:
            warnings.append("noiseRatio: needs the trained network's parameter count and the "
                            "dataset size, which come with a trial's result")
    return out, warnings
