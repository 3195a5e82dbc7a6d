"""One reconcile of one sweep: read the world, plan, write the status, stop and start Jobs.

Level-based: everything is recomputed from the Jobs, pods, metrics and the previous status, so
any number of reconciles, restarts or duplicate events converge on the same Jobs. The order of
writes matters: the status (the memory of finished and pruned trials) is written before Jobs
are deleted, and Jobs are created last, under deterministic names (a 409 is success when the
existing Job is the sweep's own; another's is `JobNameTaken`, never adopted). A trial on
several nodes also has a Service, created before its Job and deleted before it.

No error escapes a reconcile: one that fails sets `Degraded=True` (reason `ReconcileError`), and
the timer retries after a backoff, so a sweep is never wedged without a word.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException

from critbatch.clock import utc_now
from critbatch.planner import (
    FINAL,
    NO_REFERENCE,
    invalid_status,
    merge_conditions,
    plan,
    reference_from_status,
    transitions,
)
from critbatch.spec import SpecError, parse_sweep
from critbatch_operator import opmetrics
from critbatch_operator.config import Config
from critbatch_operator.indexed import is_indexed, service_name
from critbatch_operator.jobs import admit, build_job, build_service
from critbatch_operator.kube import JobNameTaken, Kube
from critbatch_operator.observations import late_disagreements, observe
from critbatch_operator.world import metrics_source, read_world

Emit = Callable[[str, str, str], None]
log = logging.getLogger(__name__)
MAX_ERROR_TEXT = 200
FINAL_PHASES = {p.value for p in FINAL}


@dataclass(kw_only=True)
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
    errors: int = 0  # reconciles failed in a row
    next_try: float = 0.0  # the timer does not retry a failed reconcile before this
    # Job names held by Jobs the sweep does not own: name -> message (its trials wait).
    taken: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: dict
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    patched: bool = False
    error: str | None = None  # the reconcile failed: what the Degraded condition says
    skipped: bool = False  # backing off after a failure: nothing was read or written


@dataclass(frozen=True, kw_only=True)
class _Run:
    """One reconcile's sweep and what it works with."""

    body: Mapping[str, Any]
    ns: str
    name: str
    kube: Kube
    cfg: Config
    state: SweepState
    emit: Emit
    clock: Callable[[], float]


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
    force: bool = False,
) -> Outcome:
    """Bring one sweep's Jobs and status in line with its spec; returns what it did.

    Never raises (but for cancellation): a failure becomes `Degraded=True` with reason
    `ReconcileError`, and until its backoff (interval x 2^n, at most --max-backoff) has passed
    only a `force`d reconcile (a spec change, a resume) runs.
    """
    async with state.lock:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta.get("name")
        if not force and clock() < state.next_try:
            return Outcome(state.last_status or _own_status(body.get("status")), skipped=True)
        run = _Run(body=body, ns=ns, name=name, kube=kube, cfg=cfg, state=state, emit=emit,
                   clock=clock)
        started = time.perf_counter()
        try:
            outcome = await _reconcile(run)
            state.errors, state.next_try = 0, 0.0
        except Exception as exc:
            opmetrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            outcome = await _failed(run, exc)
        finally:
            opmetrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        opmetrics.record_status(ns, name, outcome.status, opmetrics.campaign_of(meta))
        return outcome


def error_text(exc: BaseException) -> str:
    """What a failed reconcile's condition says: the error's kind, not what a server answered
    (API errors by status only, network errors by type only)."""
    if isinstance(exc, ApiException):
        return f"Kubernetes API error {exc.status} {exc.reason or ''}".strip()
    if isinstance(exc, OSError | urllib3.exceptions.HTTPError):
        return f"{type(exc).__name__} talking to the Kubernetes API"
    first = (str(exc).strip().splitlines() or [""])[0]
    first = "".join(c if c.isprintable() else " " for c in first[:MAX_ERROR_TEXT])
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


async def _failed(run: _Run, exc: Exception) -> Outcome:
    """Say that the reconcile failed (Degraded, an Event when it starts) and back off."""
    body, ns, name, kube, cfg, state = run.body, run.ns, run.name, run.kube, run.cfg, run.state
    state.errors += 1
    wait = min(cfg.max_backoff, cfg.reconcile_interval * 2 ** min(state.errors - 1, 30))
    state.next_try = run.clock() + wait
    log.error("reconcile of %s/%s failed (%d in a row); retrying in %gs", ns, name,
              state.errors, wait, exc_info=exc)
    text = error_text(exc)
    old = state.last_status or _own_status(body.get("status"))
    generation = (body.get("metadata") or {}).get("generation")
    degraded = {"type": "Degraded", "status": "True", "reason": "ReconcileError",
                "message": f"reconcile failed ({text}); retrying in {wait:g}s",
                "observedGeneration": generation}
    conditions = [c for c in old.get("conditions") or [] if c.get("type") != "Degraded"]
    status = {**old, "conditions": merge_conditions(old.get("conditions"),
                                                    [*conditions, degraded], utc_now())}
    outcome = Outcome(status, error=text)
    try:
        outcome.patched = await _patch_if_changed(kube, ns, name, old, status)
        state.last_status = status
    except Exception as patch_exc:  # the API may be what failed: the log has to do
        log.warning("could not write the Degraded condition of %s/%s: %s", ns, name,
                    error_text(patch_exc))
        return outcome
    if _condition(old, "Degraded").get("reason") != "ReconcileError":
        run.emit("Warning", "ReconcileError",
                 f"reconcile failed ({text}); retrying with backoff")
    return outcome


async def _reconcile(run: _Run) -> Outcome:
    body, ns, name, kube, cfg, state = run.body, run.ns, run.name, run.kube, run.cfg, run.state
    emit, clock = run.emit, run.clock
    old = _own_status(body.get("status"))
    generation = (body.get("metadata") or {}).get("generation")
    if state.last_status is not None:
        old = state.last_status
    try:
        sweep = admit(parse_sweep(body), cfg)
        if sweep.trainer.image is None and not cfg.trainer_image:
            raise SpecError("spec.trainer.image: required, the operator has no default trainer "
                            "image")
    except SpecError as exc:
        # Keep what is known of the trials: it is the memory of finished and pruned ones.
        status = {**old, **invalid_status(exc, generation)}
        status["conditions"] = merge_conditions(old.get("conditions"), status["conditions"],
                                                utc_now())
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
    done = {t.get("job") for t in old.get("trials") or []
            if isinstance(t, dict) and t.get("phase") in FINAL_PHASES}
    for job, why in world.foreign.items():
        if job not in done:  # a finished trial's name blocks nothing
            _taken(state, emit, job, why)
    problems = [*world.problems, *(("JobNameTaken", m) for m in state.taken.values())]

    reference = NO_REFERENCE
    if sweep.reference is not None and sweep.reference.sweep:
        ref = await asyncio.to_thread(kube.get_sweep, ns, sweep.reference.sweep)
        reference = reference_from_status((ref or {}).get("status"))

    p = plan(sweep, observations, reference=reference, previous_status=old, problems=problems)
    status = p.status
    status["conditions"] = merge_conditions(old.get("conditions"), status["conditions"],
                                            utc_now())
    patched = await _patch_if_changed(kube, ns, name, old, status)
    state.last_status = status

    outcome = Outcome(status, patched=patched)
    jobs = {(t["batchSize"], t["seed"]): t["job"] for t in status["trials"]}
    several = sweep.trainer.nodes > 1
    indexed = {(j.get("metadata") or {}).get("name") for j in world.jobs.values() if is_indexed(j)}
    # A pod's trials share one Job: delete it once.
    for job in dict.fromkeys(jobs[(key.batch_size, key.seed)] for key, _ in p.stop):
        if several or job in indexed:  # first: a failure in between stops the Job again
            await asyncio.to_thread(kube.delete_service, ns, service_name(job))
        if await asyncio.to_thread(kube.delete_job, ns, job):
            opmetrics.JOBS_DELETED.inc()
            outcome.deleted.append(job)
    for trials in p.create:
        manifest = build_job(sweep, trials, metrics_port=cfg.trainer_metrics_port,
                             default_image=cfg.trainer_image)
        if several:  # before its Job, so that no pod of the Job runs without its names
            await asyncio.to_thread(kube.create_service, ns, build_service(sweep, trials[0]))
        try:
            created = await asyncio.to_thread(kube.create_job, ns, manifest)
        except JobNameTaken as exc:
            _taken(state, emit, exc.name, exc.why)
            continue
        state.taken.pop(manifest["metadata"]["name"], None)
        if created:
            opmetrics.JOBS_CREATED.inc()
            outcome.created.append(manifest["metadata"]["name"])
            which = ", ".join(f"batch size {k.batch_size} seed {k.seed}" for k in trials)
            emit("Normal", "TrialCreated", f"created Job {manifest['metadata']['name']} for "
                                           f"{which}")
    waiting = {t["job"] for t in status["trials"] if t["phase"] == "Pending"}
    state.taken = {job: m for job, m in state.taken.items() if job in waiting}
    _emit_changes(old, status, emit)
    for key, note in notes:
        if key not in state.warned:
            state.warned.add(key)
            emit("Warning", "ResultDisagreement", note)
    return outcome


def _taken(state: SweepState, emit: Emit, job: str, why: str) -> None:
    """Remember a Job name held by a Job the sweep does not own; an Event the first time."""
    if job not in state.taken:
        message = (f"Job {job} exists and is not this sweep's ({why}): its trials wait until "
                   "it is gone; it is not adopted")
        state.taken[job] = message
        emit("Warning", "JobNameTaken", message)


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
    if now.get("reason") == "JobNameTaken":
        return  # each taken name had its own Event
    if now.get("status") == "True" and (was.get("status") != "True"
                                        or was.get("reason") != now.get("reason")):
        emit("Warning", now.get("reason") or "Degraded", now.get("message") or "")
