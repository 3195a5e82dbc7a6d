"""A campaign: the CriticalBatchSweeps that share the label `critbatch.dev/campaign`, read as
one experiment (the paper's Table 3: per optimizer, the b* measured beside the b* Proposition
3.4 predicts from a reference sweep).

Pure: manifests and statuses in, names, an order and table rows out. The input is YAML a user
or a cluster handed in, so every field a row takes is checked and a bad one is an InputError
naming the sweep and the field.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Any

from critbatch import report
from critbatch.errors import InputError
from critbatch.numbers import json_number
from critbatch.spec import MAX_BATCH

CAMPAIGN_LABEL = "critbatch.dev/campaign"
MAX_SWEEPS = 500  # sweeps in one campaign: far more than a table or a plot can show
MAX_NAME = 253  # a Kubernetes object name


class CampaignError(InputError):
    """The sweeps do not make one campaign: names given twice, references in a cycle, two
    campaign labels, or a field a campaign's table cannot show."""


def _printable(text: str, limit: int = MAX_NAME) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _where(i: int, manifest: Any) -> str:
    """How an error names a sweep: its name when it has a usable one, else its position."""
    meta = manifest.get("metadata") if isinstance(manifest, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if isinstance(name, str) and name and len(name) <= MAX_NAME:
        return _printable(name)
    return f"items[{i}]"


def _check_list(manifests: Any) -> Sequence[Any]:
    if isinstance(manifests, str | bytes) or not isinstance(manifests, Sequence):
        raise CampaignError("items: expected a list of CriticalBatchSweep resources")
    if len(manifests) > MAX_SWEEPS:
        raise CampaignError(f"items: {len(manifests)} sweeps, more than {MAX_SWEEPS} in one "
                            "campaign")
    return manifests


def _name(i: int, manifest: Any) -> str:
    """metadata.name, which references name and rows show: a non-empty string."""
    if not isinstance(manifest, Mapping):
        raise CampaignError(f"items[{i}]: expected a CriticalBatchSweep resource (a mapping)")
    meta = manifest.get("metadata")
    if not isinstance(meta, Mapping):
        raise CampaignError(f"items[{i}].metadata: expected a mapping with the sweep's name")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise CampaignError(f"items[{i}].metadata.name: expected the sweep's name, got "
                            f"{str(name)[:40]!r}")
    if len(name) > MAX_NAME:
        raise CampaignError(f"items[{i}].metadata.name: longer than {MAX_NAME} characters")
    return name


def _label(i: int, manifest: Mapping[str, Any]) -> str | None:
    labels = manifest["metadata"].get("labels")
    if labels is None:
        return None
    where = _where(i, manifest)
    if not isinstance(labels, Mapping):
        raise CampaignError(f"{where}: metadata.labels: expected a mapping")
    value = labels.get(CAMPAIGN_LABEL)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 63:
        raise CampaignError(f"{where}: metadata.labels.{CAMPAIGN_LABEL}: expected a label "
                            f"value (1 to 63 characters), got {str(value)[:40]!r}")
    return value


def _reference(i: int, manifest: Mapping[str, Any]) -> str | None:
    """spec.reference.sweep: the sweep whose noise ratio predicts this one's b*."""
    spec = manifest.get("spec")
    if spec is None:
        return None
    where = _where(i, manifest)
    if not isinstance(spec, Mapping):
        raise CampaignError(f"{where}: spec: expected a mapping")
    ref = spec.get("reference")
    if ref is None:
        return None
    if not isinstance(ref, Mapping):
        raise CampaignError(f"{where}: spec.reference: expected a mapping")
    sweep = ref.get("sweep")
    if sweep is None:
        return None
    if not isinstance(sweep, str) or not sweep or len(sweep) > MAX_NAME:
        raise CampaignError(f"{where}: spec.reference.sweep: expected a sweep's name, got "
                            f"{str(sweep)[:40]!r}")
    return sweep


def campaign_name(manifests: Sequence[Mapping[str, Any]]) -> str | None:
    """The campaign label's value the sweeps share; None when none has it. A sweep without
    the label joins the others (a directory groups them); two different values are an error."""
    manifests = _check_list(manifests)
    seen: tuple[str, str] | None = None
    for i, m in enumerate(manifests):
        name = _name(i, m)
        value = _label(i, m)
        if value is None:
            continue
        if seen is None:
            seen = (name, value)
        elif value != seen[1]:
            raise CampaignError(
                f"metadata.labels.{CAMPAIGN_LABEL}: sweep {_printable(seen[0])!r} is in "
                f"campaign {_printable(seen[1])!r}, sweep {_printable(name)!r} in "
                f"{_printable(value)!r}: one campaign at a time")
    return seen[1] if seen else None


def campaign_order(manifests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The sweeps with each referenced one before those that reference it (ties by name), so a
    run can start the references first and a table reads from reference to prediction.

    A reference to a sweep outside the set is no edge here: it resolves as it always does.
    """
    manifests = _check_list(manifests)
    by_name: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for i, m in enumerate(manifests):
        name = _name(i, m)
        if name in by_name:
            raise CampaignError(f"metadata.name: {_printable(name)!r} is given twice "
                                f"(items[{by_name[name][0]}] and items[{i}])")
        by_name[name] = (i, m)
    refs = {name: _reference(i, m) for name, (i, m) in by_name.items()}
    waiting = {name: 1 if ref in by_name else 0 for name, ref in refs.items()}
    users: dict[str, list[str]] = {}
    for name, ref in refs.items():
        if ref in by_name:
            users.setdefault(ref, []).append(name)
    ready = [name for name, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for user in users.get(name, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(by_name):
        raise CampaignError(f"spec.reference.sweep: {_cycle(refs, set(by_name) - set(order))}")
    return [by_name[name][1] for name in order]


def _cycle(refs: Mapping[str, str | None], left: set[str]) -> str:
    """The sweeps on one cycle among those left unordered. Each references exactly one sweep,
    and every one left references another one left, so following references from any of them
    comes back round."""
    path: list[str] = []
    at = min(left)
    while at not in path:
        path.append(at)
        at = str(refs[at])
    loop = path[path.index(at):]
    if len(loop) == 1:
        return f"sweep {_printable(at)!r} references itself"
    chain = " -> ".join(_printable(n) for n in [*loop, at])
    return f"the sweeps reference each other in a cycle: {chain}"


def _number(value: Any, field: str, *, positive: bool = False) -> float | int | None:
    """A finite number (or nothing), integral ones as int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CampaignError(f"{field}: expected a number, got {str(value)[:40]!r}")
    if positive and value <= 0:
        raise CampaignError(f"{field}: expected a number > 0, got {value!r}")
    return json_number(value)


def _batch(value: Any, field: str) -> int | None:
    """A batch size, as the plot's log axis and the table show it: an integer in 1..MAX_BATCH."""
    x = _number(value, field)
    if x is None:
        return None
    if x != int(x) or not 1 <= x <= MAX_BATCH:
        raise CampaignError(f"{field}: expected a batch size (an integer in 1..{MAX_BATCH}), "
                            f"got {value!r}")
    return int(x)


def _text(value: Any, field: str, limit: int = 63) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CampaignError(f"{field}: expected a string, got {str(value)[:40]!r}")
    return _printable(value, limit)


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CampaignError(f"{field}: expected a mapping")
    return value


def _optimizer(cbs: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The setting Proposition 3.4 used (the status's), else the spec's name and generator."""
    used = _mapping(cbs.get("optimizer"), "status.criticalBatchSize.optimizer")
    if used:
        field = "status.criticalBatchSize.optimizer"
        name, side = used.get("name"), used
    else:
        field = "spec.optimizer"
        written = _mapping(spec.get("optimizer"), field)
        name = written.get("name")
        side = _mapping(written.get("generator"), f"{field}.generator")
        field += ".generator"
    return {
        "optimizer": _text(name, f"{field.removesuffix('.generator')}.name"),
        "learningRate": _number(side.get("learningRate"), f"{field}.learningRate"),
        "beta1": _number(side.get("beta1"), f"{field}.beta1"),
        "beta2": _number(side.get("beta2"), f"{field}.beta2"),
    }


def _held(grid: int | None, plausible: list[int]) -> bool | None:
    """Whether the prediction (snapped to the grid) is among the plausible b*."""
    if grid is None or not plausible:
        return None
    return grid in plausible


def _interval(value: Any, field: str) -> list[float] | None:
    """[low, high] of positive numbers, low <= high, or nothing."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise CampaignError(f"{field}: expected [low, high], got {str(value)[:40]!r}")
    low, high = (_number(v, f"{field}[{i}]", positive=True) for i, v in enumerate(value))
    if low is None or high is None:
        raise CampaignError(f"{field}: expected two numbers, got {str(value)[:40]!r}")
    if low > high:
        raise CampaignError(f"{field}: expected low <= high, got [{low}, {high}]")
    return [low, high]


def _agrees(predicted: float | None, interval: list[float] | None,
            fitted: list[float] | None) -> bool | None:
    """Whether the prediction (its interval, else the value) meets the fitted b*'s credible
    interval: Proposition 3.4 against the model N(b) it speaks of, which stalls do not move."""
    low, high = interval or (predicted, predicted)
    if low is None or high is None or fitted is None:
        return None
    return low <= fitted[1] and fitted[0] <= high


def _row(manifest: Mapping[str, Any]) -> dict[str, Any]:
    name = manifest["metadata"]["name"]
    spec = _mapping(manifest.get("spec"), "spec")
    kind = manifest.get("kind")
    if kind is not None and kind != "CriticalBatchSweep":
        raise CampaignError(f"kind: expected CriticalBatchSweep, got {str(kind)[:40]!r}")
    status = _mapping(manifest.get("status"), "status")
    if status:
        try:
            report.check_resource(manifest)
        except InputError as exc:
            raise CampaignError(str(exc)) from None
    cbs = _mapping(status.get("criticalBatchSize"), "status.criticalBatchSize")
    resolved = cbs.get("resolved")
    if resolved is not None and not isinstance(resolved, bool):
        raise CampaignError(f"status.criticalBatchSize.resolved: expected true or false, got "
                            f"{str(resolved)[:40]!r}")
    f = "status.criticalBatchSize"
    plausible = sorted({b for i, raw in enumerate(cbs.get("plausible") or [])
                        if (b := _batch(raw, f"{f}.plausible[{i}]")) is not None})
    grid = _batch(cbs.get("predictedGrid"), f"{f}.predictedGrid")
    predicted = _number(cbs.get("predicted"), f"{f}.predicted", positive=True)
    predicted_interval = _interval(cbs.get("predictedInterval"), f"{f}.predictedInterval")
    fitted_interval = _interval(cbs.get("interval"), f"{f}.interval")
    confidence = _number(cbs.get("confidence"), f"{f}.confidence")
    if confidence is not None and not 0 <= confidence <= 1:
        raise CampaignError(f"{f}.confidence: expected a probability in 0..1, got {confidence}")
    spent = [r["sfo"] for r in report.trial_rows(status) if r["sfo"] is not None]
    return {
        "sweep": _printable(name),
        "phase": _text(status.get("phase"), "status.phase") or "Pending",
        **_optimizer(cbs, spec),
        "reference": _printable(ref) if (ref := _reference(0, manifest)) else None,
        "mostProbable": _batch(cbs.get("mostProbable"), f"{f}.mostProbable"),
        "plausible": plausible,
        "resolved": resolved,
        "confidence": confidence,
        "measured": _batch(cbs.get("measured"), f"{f}.measured"),
        "fitted": _number(cbs.get("fitted"), f"{f}.fitted", positive=True),
        "fittedInterval": fitted_interval,
        "predicted": predicted,
        "predictedInterval": predicted_interval,
        "predictedGrid": grid,
        "predictionHeld": _held(grid, plausible),
        "predictionFits": _agrees(predicted, predicted_interval, fitted_interval),
        "trialsDone": _number(status.get("trialsDone"), "status.trialsDone"),
        "trialsTotal": _number(status.get("trialsTotal"), "status.trialsTotal"),
        "sfoSpent": json_number(math.fsum(spent)) or 0,
        "sfoSaved": _number(status.get("sfoSaved"), "status.sfoSaved"),
    }


def campaign_rows(resources: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per sweep, in campaign order: its setting, its reference, its answer and how
    sure, the prediction and whether it held, and the compute spent. A sweep with no status
    yet is a Pending row with no answer."""
    ordered = campaign_order(resources)
    campaign_name(resources)
    rows = []
    for m in ordered:
        try:
            rows.append(_row(m))
        except CampaignError as exc:
            raise CampaignError(f"{_printable(m['metadata']['name'])}: {exc}") from None
    return rows
