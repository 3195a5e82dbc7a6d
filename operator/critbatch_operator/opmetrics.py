"""The operator's own Prometheus metrics (critbatch_operator_*), on their own registry."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

SWEEPS = Gauge("critbatch_operator_sweeps", "Sweeps by phase", ["phase"], registry=REGISTRY)
TRIALS = Gauge("critbatch_operator_trials", "Trials by sweep and phase",
               ["namespace", "sweep", "phase"], registry=REGISTRY)
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
                 ["namespace", "sweep", "kind"], registry=REGISTRY)
RESOLVED = Gauge("critbatch_operator_critical_batch_size_resolved",
                 "1 when the sweep's plausible set is one batch size, else 0",
                 ["namespace", "sweep"], registry=REGISTRY)
# The gauge's kind label and the status.criticalBatchSize field it shows.
CRITICAL_KINDS = {"most_probable": "mostProbable", "measured": "measured", "fitted": "fitted",
                  "predicted": "predicted"}
SFO_SAVED = Gauge("critbatch_operator_sfo_saved", "SFO not spent thanks to pruning (upper bound)",
                  ["namespace", "sweep"], registry=REGISTRY)

_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Invalid")
_TRIAL_PHASES = ("Pending", "Running", "Reached", "Censored", "Failed", "Pruned")
_sweep_phases: dict[tuple[str, str], str] = {}


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` in a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)


def record_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Set the per-sweep gauges from a status the planner produced."""
    _sweep_phases[(namespace, name)] = status.get("phase") or "Pending"
    _refresh_sweeps()
    counts = dict.fromkeys(_TRIAL_PHASES, 0)
    for t in status.get("trials") or []:
        counts[t.get("phase")] = counts.get(t.get("phase"), 0) + 1
    for phase, n in counts.items():
        TRIALS.labels(namespace, name, phase).set(n)
    cb = status.get("criticalBatchSize") or {}
    for kind, field in CRITICAL_KINDS.items():
        value = cb.get(field)
        if value is None:
            _remove(CRITICAL, namespace, name, kind)
        else:
            CRITICAL.labels(namespace, name, kind).set(float(value))
    RESOLVED.labels(namespace, name).set(1.0 if cb.get("resolved") else 0.0)
    SFO_SAVED.labels(namespace, name).set(float(status.get("sfoSaved") or 0.0))


def forget(namespace: str, name: str) -> None:
    """Drop a deleted sweep's series."""
    _sweep_phases.pop((namespace, name), None)
    _refresh_sweeps()
    for phase in _TRIAL_PHASES:
        _remove(TRIALS, namespace, name, phase)
    for kind in CRITICAL_KINDS:
        _remove(CRITICAL, namespace, name, kind)
    _remove(RESOLVED, namespace, name)
    _remove(SFO_SAVED, namespace, name)


def _refresh_sweeps() -> None:
    counts = dict.fromkeys(_PHASES, 0)
    for phase in _sweep_phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        SWEEPS.labels(phase).set(n)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
