"""The operator's own Prometheus metrics (critbatch_operator_*), on their own registry.

Every per-sweep series carries the sweep's campaign (its `critbatch.dev/campaign` label, ""
when none), so that a dashboard can select a campaign's sweeps in one matcher.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from critbatch.campaign import CAMPAIGN_LABEL

REGISTRY = CollectorRegistry(auto_describe=True)
_SWEEP = ["namespace", "sweep", "campaign"]

SWEEPS = Gauge("critbatch_operator_sweeps", "Sweeps by phase", ["phase"], registry=REGISTRY)
SWEEP_PHASE = Gauge("critbatch_operator_sweep_phase",
                    "1 for the phase the sweep is in, 0 for the others",
                    [*_SWEEP, "phase"], registry=REGISTRY)
PROGRESS = Gauge("critbatch_operator_sweep_progress",
                 "Trials done over the sweep's trials (0 before it has any)", _SWEEP,
                 registry=REGISTRY)
TRIALS = Gauge("critbatch_operator_trials", "Trials by sweep and phase", [*_SWEEP, "phase"],
               registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "critbatch_operator_reconcile_duration_seconds", "Wall time of one sweep reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
RECONCILE_ERRORS = Counter("critbatch_operator_reconcile_errors_total",
                           "Reconciles that raised", ["reason"], registry=REGISTRY)
JOBS_CREATED = Counter("critbatch_operator_jobs_created_total", "Trial Jobs created",
                       registry=REGISTRY)
JOBS_DELETED = Counter("critbatch_operator_jobs_deleted_total",
                       "Trial Jobs deleted (pruned trials)", registry=REGISTRY)
CRITICAL = Gauge("critbatch_operator_critical_batch_size",
                 "Critical batch size per sweep: most probable, measured, fitted or predicted",
                 [*_SWEEP, "kind"], registry=REGISTRY)
RESOLVED = Gauge("critbatch_operator_critical_batch_size_resolved",
                 "1 when the sweep's plausible set is one batch size, else 0", _SWEEP,
                 registry=REGISTRY)
# The gauge's kind label and the status.criticalBatchSize field it shows.
CRITICAL_KINDS = {"most_probable": "mostProbable", "measured": "measured", "fitted": "fitted",
                  "predicted": "predicted"}
SFO_SAVED = Gauge("critbatch_operator_sfo_saved", "SFO not spent thanks to pruning (upper bound)",
                  _SWEEP, registry=REGISTRY)

_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Invalid")
_TRIAL_PHASES = ("Pending", "Running", "Reached", "Censored", "Failed", "Pruned")
# A Kubernetes label value: at most 63 characters, alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_sweep_phases: dict[tuple[str, str], str] = {}
_campaigns: dict[tuple[str, str], str] = {}


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` in a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)


def campaign_of(meta: Mapping[str, Any]) -> str:
    """The sweep's campaign label, "" when it has none or one no API server would store (a
    label value bounds the series' cardinality like a name does)."""
    labels = meta.get("labels")
    value = labels.get(CAMPAIGN_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) and _LABEL_VALUE.fullmatch(value) else ""


def record_status(namespace: str, name: str, status: Mapping[str, Any],
                  campaign: str = "") -> None:
    """Set the per-sweep gauges from a status the planner produced; a sweep that moved to
    another campaign loses the series of the old one."""
    key = (namespace, name)
    if _campaigns.get(key, campaign) != campaign:
        _remove_sweep(namespace, name, _campaigns[key])
    _campaigns[key] = campaign
    labels = (namespace, name, campaign)
    phase = _sweep_phases[key] = status.get("phase") or "Pending"
    _refresh_sweeps()
    for p in _PHASES:
        SWEEP_PHASE.labels(*labels, p).set(1.0 if p == phase else 0.0)
    done, total = status.get("trialsDone"), status.get("trialsTotal")
    PROGRESS.labels(*labels).set(done / total if isinstance(done, int | float)
                                 and isinstance(total, int | float) and total > 0 else 0.0)
    counts = dict.fromkeys(_TRIAL_PHASES, 0)
    for t in status.get("trials") or []:
        counts[t.get("phase")] = counts.get(t.get("phase"), 0) + 1
    for p, n in counts.items():
        TRIALS.labels(*labels, p).set(n)
    cb = status.get("criticalBatchSize") or {}
    for kind, field in CRITICAL_KINDS.items():
        value = cb.get(field)
        if value is None:
            _remove(CRITICAL, *labels, kind)
        else:
            CRITICAL.labels(*labels, kind).set(float(value))
    RESOLVED.labels(*labels).set(1.0 if cb.get("resolved") else 0.0)
    SFO_SAVED.labels(*labels).set(float(status.get("sfoSaved") or 0.0))


def forget(namespace: str, name: str) -> None:
    """Drop a deleted sweep's series."""
    _sweep_phases.pop((namespace, name), None)
    _refresh_sweeps()
    _remove_sweep(namespace, name, _campaigns.pop((namespace, name), ""))


def _remove_sweep(namespace: str, name: str, campaign: str) -> None:
    labels = (namespace, name, campaign)
    for phase in _PHASES:
        _remove(SWEEP_PHASE, *labels, phase)
    for phase in _TRIAL_PHASES:
        _remove(TRIALS, *labels, phase)
    for kind in CRITICAL_KINDS:
        _remove(CRITICAL, *labels, kind)
    for metric in (PROGRESS, RESOLVED, SFO_SAVED):
        _remove(metric, *labels)


def _refresh_sweeps() -> None:
    counts = dict.fromkeys(_PHASES, 0)
    for phase in _sweep_phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        SWEEPS.labels(phase).set(n)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
