"""Trial records: what the planner knows of each trial, from what a backend sees now and the
previous status (the memory of trials whose Job or process is gone)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from typing import Any

from critbatch.numbers import positive_int
from critbatch.protocol import result_dataset_size, result_optimizer, result_params
from critbatch.provenance import hardware_summary
from critbatch.science import OptimizerSetting
from critbatch.vocabulary import TrialKey

MAX_STATUS_TEXT = 256  # a hardware line read back from a status; longer is not ours


class Phase(StrEnum):
    """A trial's phase; the last four are final (a finished trial is never rerun)."""

    Pending = "Pending"
    Running = "Running"
    Reached = "Reached"
    Censored = "Censored"
    Failed = "Failed"
    Pruned = "Pruned"


FINAL = frozenset({Phase.Reached, Phase.Censored, Phase.Failed, Phase.Pruned})
OPEN = (Phase.Pending, Phase.Running)


@dataclass(frozen=True)
class Observation:
    """What a backend sees of one trial now (see docs/contracts.md)."""

    key: TrialKey
    phase: Phase
    _: KW_ONLY
    steps: float | None = None
    value: float | None = None  # the target metric's last value
    result: Mapping[str, Any] | None = None
    source: str | None = None
    reason: str | None = None
    restarts: int = 0
    job: str | None = None  # the Job (or process group) running it, shared by a pod's trials


@dataclass
class TrialRecord:
    """One trial as the planner sees it this call; pruning and the adaptive choice edit it."""

    key: TrialKey
    phase: Phase
    _: KW_ONLY
    steps: float | None = None
    value: float | None = None
    source: str | None = None
    reason: str | None = None
    restarts: int = 0
    params: int | None = None
    dataset_size: int | None = None
    seen: bool = False  # the backend sees a Job/process for it now
    job: str | None = None
    selected_because: str | None = None  # why an adaptive sweep started it
    hardware: str | None = None  # where it ran, from its result (critbatch.provenance)
    # The optimizer its result reports (Proposition 3.4's input), or why it cannot be used.
    optimizer: OptimizerSetting | str | None = None

    @property
    def undecided(self) -> bool:
        """Pending or running: not decided yet."""
        return self.phase in OPEN


def as_phase(value: Any) -> Phase | None:
    """The phase a status row names, or None for anything else."""
    try:
        return Phase(value)
    except ValueError:
        return None


def previous_records(previous_status: Mapping[str, Any] | None) -> dict[TrialKey, dict]:
    """The previous status's trial rows by key; rows without a readable key are skipped."""
    out: dict[TrialKey, dict] = {}
    for t in (previous_status or {}).get("trials") or []:
        try:
            out[TrialKey(int(t["batchSize"]), int(t["seed"]))] = t
        except (KeyError, TypeError, ValueError):
            continue
    return out


def row_value(row: Mapping[str, Any]) -> Any:
    """A status row's metric value: `value`, or `fid` in a status of an older version."""
    return row.get("value", row.get("fid"))


def _hardware(result: Mapping[str, Any]) -> str | None:
    line = hardware_summary(result.get("hardware")) if result.get("hardware") else "unknown"
    return None if line == "unknown" else line


def _status_text(value: Any) -> str | None:
    """A string read back from a status, if it is one of a sane length."""
    return value if isinstance(value, str) and len(value) <= MAX_STATUS_TEXT else None


def trial_record(key: TrialKey, obs: Observation | None,
                 prev: Mapping[str, Any] | None) -> TrialRecord:
    """The record of one trial from its observation now and its previous status row."""
    prev_phase = as_phase(prev.get("phase")) if prev else None
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
        return TrialRecord(
            key, prev_phase, steps=prev.get("steps"), value=row_value(prev),
            source=prev.get("source"), reason=prev.get("reason"),
            restarts=int(prev.get("restarts") or 0),
            params=positive_int(prev.get("generatorParams")) or result_params(result),
            dataset_size=positive_int(prev.get("datasetSize")) or result_dataset_size(result),
            seen=obs is not None and obs.phase not in FINAL,
            job=(obs.job if obs is not None else None) or prev.get("job"),
            selected_because=prev.get("selectedBecause"),
            hardware=_hardware(result) or _status_text(prev.get("hardware")),
            optimizer=result_optimizer(result) if result else None,
        )
    if obs is None:
        return TrialRecord(key, Phase.Pending,
                           selected_because=(prev or {}).get("selectedBecause"))
    result = obs.result or {}
    rec = TrialRecord(
        key, Phase(obs.phase), steps=obs.steps, value=obs.value, source=obs.source,
        reason=obs.reason, restarts=obs.restarts,
        params=result_params(result),
        dataset_size=result_dataset_size(result),
        seen=obs.phase not in FINAL,  # a finished trial's Job or process needs no stopping
        job=obs.job or (prev or {}).get("job"),
        selected_because=(prev or {}).get("selectedBecause"),
        hardware=_hardware(result) or _status_text((prev or {}).get("hardware")),
        optimizer=result_optimizer(result) if result else None,
    )
    if prev and rec.undecided:
        # Metrics may be unreachable for a while: keep the last progress we knew.
        if rec.steps is None:
            rec.steps = prev.get("steps")
        if rec.value is None:
            rec.value = row_value(prev)
        if rec.source is None:
            rec.source = prev.get("source")
    if rec.phase in (Phase.Reached, Phase.Censored) and rec.steps is None:
        rec.phase, rec.reason = Phase.Running, rec.reason or "finished; waiting for its result"
        rec.seen = True
    return rec


def by_batch(records: Iterable[TrialRecord]) -> dict[int, list[TrialRecord]]:
    """Records grouped by batch size."""
    out: dict[int, list[TrialRecord]] = defaultdict(list)
    for r in records:
        out[r.key.batch_size].append(r)
    return out
