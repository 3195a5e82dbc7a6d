"""One reconcile of one sweep: read the world, plan, write the status, stop and start Jobs.

Level-based: everything is recomputed from the Jobs, pods, metrics and the previous status, so
any number of reconciles, restarts or duplicate events converge on the same Jobs. The order of
writes matters: the status (the memory of finished and pruned trials) is written before Jobs
are deleted, and Jobs are created last, under deterministic names (a 409 is success).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from critbatch.planner import (
    invalid_status,
    merge_conditions,
    plan,
    reference_from_status,
    transitions,
)
from critbatch.spec import SpecError, parse_sweep
from critbatch_operator import opmetrics
from critbatch_operator.config import Config
from critbatch_operator.jobs import build_job
from critbatch_operator.kube import Kube
from critbatch_operator.world import late_disagreements, metrics_source, observe, read_world

Emit = Callable[[str, str, str], None]


@dataclass
class SweepState:
    """What the operator remembers of a sweep between reconciles (only to be polite: losing it
    loses nothing but the backoff)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    metrics_failures: int = 0
    next_metrics_try: float = 0.0
    # The last status this operator wrote: kopf's copy of the body may lag behind it, and a
    # stale previous status would forget trials just finished or pruned.
    last_status: dict | None = None
    warned: set = field(default_factory=set)  # trials whose disagreement has been reported


@dataclass
class Outcome:
    status: dict
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    patched: bool = False


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _own_status(status: Mapping[str, Any] | None) -> dict:
    """The status without what other writers (kopf) keep there."""
    return {k: v for k, v in (status or {}).items() if k != "kopf"}


async def reconcile(
    body: Mapping[str, Any],
    *,
    kube: Kube,
    cfg: Config,
    state: SweepState,
    emit: Emit,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Bring one sweep's Jobs and status in line with its spec; returns what it did."""
    async with state.lock:
        started = time.perf_counter()
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta.get("name")
        try:
            outcome = await _reconcile(body, ns, name, kube, cfg, state, emit, clock)
        except Exception as exc:
            opmetrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            raise
        finally:
            opmetrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        opmetrics.record_status(ns, name, outcome.status)
        return outcome


async def _reconcile(body: Mapping[str, Any], ns: str, name: str, kube: Kube, cfg: Config,
                     state: SweepState, emit: Emit, clock: Callable[[], float]) -> Outcome:
    old = _own_status(body.get("status"))
    generation = (body.get("metadata") or {}).get("generation")
    if state.last_status is not None:
        old = state.last_status
    try:
        sweep = parse_sweep(body)
        if sweep.trainer.image is None and not cfg.trainer_image:
            raise SpecError("spec.trainer.image: required, the operator has no default trainer "
                            "image")
    except SpecError as exc:
        # Keep what is known of the trials: it is the memory of finished and pruned ones.
        status = {**old, **invalid_status(exc, generation)}
        status["conditions"] = merge_conditions(old.get("conditions"), status["conditions"],
                                                now_iso())
        patched = await _patch_if_changed(kube, ns, name, old, status)
        state.last_status = status
        if patched and _condition(old, "Ready").get("message") != str(exc):
            emit("Warning", "InvalidSpec", str(exc))
        return Outcome(status, patched=patched)

    kind, _ = metrics_source(sweep, cfg.prometheus_url)
    may_query = kind != "prometheus" or clock() >= state.next_metrics_try
    world = await asyncio.to_thread(
        read_world, kube, sweep, prometheus_url=cfg.prometheus_url,
        namespace_label=cfg.prometheus_namespace_label, trainer_port=cfg.trainer_metrics_port,
        timeout=cfg.metrics_timeout, query_prometheus=may_query)
    if kind == "prometheus" and may_query:
        if world.source is None:
            state.metrics_failures += 1
            wait = min(cfg.max_backoff, cfg.reconcile_interval * 2 ** (state.metrics_failures - 1))
            state.next_metrics_try = clock() + wait
            world.problems = [(r, f"{m}; retrying in {wait:g}s, meanwhile results come from "
                                  "termination messages") for r, m in world.problems]
        else:
            state.metrics_failures, state.next_metrics_try = 0, 0.0
    observations, notes = observe(sweep, world)
    notes += late_disagreements(old, world)

    ref_ratio = ref_params = ref_size = None
    if sweep.reference is not None and sweep.reference.sweep:
        ref = await asyncio.to_thread(kube.get_sweep, ns, sweep.reference.sweep)
        ref_ratio, ref_params, ref_size = reference_from_status((ref or {}).get("status"))

    p = plan(sweep, observations, reference_noise_ratio=ref_ratio, reference_params=ref_params,
             reference_dataset_size=ref_size, previous_status=old, problems=world.problems)
    status = p.status
    status["conditions"] = merge_conditions(old.get("conditions"), status["conditions"],
                                            now_iso())
    patched = await _patch_if_changed(kube, ns, name, old, status)
    state.last_status = status

    outcome = Outcome(status, patched=patched)
    jobs = {(t["batchSize"], t["seed"]): t["job"] for t in status["trials"]}
    # A pod's trials share one Job: delete it once.
    for job in dict.fromkeys(jobs[(key.batch_size, key.seed)] for key, _ in p.stop):
        if await asyncio.to_thread(kube.delete_job, ns, job):
            opmetrics.JOBS_DELETED.inc()
            outcome.deleted.append(job)
    for trials in p.create:
        manifest = build_job(sweep, trials, metrics_port=cfg.trainer_metrics_port,
                             default_image=cfg.trainer_image)
        if await asyncio.to_thread(kube.create_job, ns, manifest):
            opmetrics.JOBS_CREATED.inc()
            outcome.created.append(manifest["metadata"]["name"])
            which = ", ".join(f"batch size {k.batch_size} seed {k.seed}" for k in trials)
            emit("Normal", "TrialCreated", f"created Job {manifest['metadata']['name']} for "
                                           f"{which}")
    _emit_changes(old, status, emit)
    for key, note in notes:
        if key not in state.warned:
            state.warned.add(key)
            emit("Warning", "ResultDisagreement", note)
    return outcome


def _condition(status: Mapping[str, Any], type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _without_nulls(x: Any) -> Any:
    """A merge patch's nulls delete keys: compare statuses as the server stores them."""
    if isinstance(x, dict):
        return {k: _without_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_nulls(v) for v in x]
    return x


async def _patch_if_changed(kube: Kube, ns: str, name: str, old: dict, status: dict) -> bool:
    if _without_nulls({k: old.get(k) for k in status}) == _without_nulls(status):
        return False
    # A merge patch: keys the new status drops are set to null so that they go away.
    patch = {**{k: None for k in old if k not in status}, **status}
    await asyncio.to_thread(kube.patch_status, ns, name, patch)
    return True


def _emit_changes(old: dict, new: dict, emit: Emit) -> None:
    for type_, reason, message in transitions(old, new):
        emit(type_, reason, message)
    was, now = _condition(old, "Degraded"), _condition(new, "Degraded")
    if now.get("status") == "True" and (was.get("status") != "True"
                                        or was.get("reason") != now.get("reason")):
        emit("Warning", now.get("reason") or "Degraded", now.get("message") or "")
