"""Trials into Jobs: each Job's name, and how many Jobs may start within spec.parallelism."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from critbatch.planning.trials import Phase, TrialRecord
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey

MAX_LABEL = 63  # a DNS-1123 label
_NOT_LABEL = re.compile(r"[^a-z0-9-]")


def job_name(sweep_name: str, key: TrialKey) -> str:
    """`<sweep>-<trial name>` (`demo-b8-s0`), a DNS-1123 label of at most 63 characters.

    When the sweep name is too long or not a label (it may hold dots), it is cut and a hash of
    the full name keeps the result unique.
    """
    suffix = f"-{key.name}"
    clean = _NOT_LABEL.sub("-", sweep_name.lower())
    if clean == sweep_name and len(clean) + len(suffix) <= MAX_LABEL:
        return clean + suffix
    digest = hashlib.sha256(sweep_name.encode()).hexdigest()[:6]
    room = MAX_LABEL - len(suffix) - len(digest) - 1
    head = clean[:room].strip("-") or "sweep"
    return f"{head}-{digest}{suffix}"


def shares_live_job(r: TrialRecord, records: Iterable[TrialRecord]) -> bool:
    """Whether another open trial runs in r's Job: stopping the Job would stop it too."""
    return r.job is not None and any(
        o is not r and o.job == r.job and o.seen and o.undecided for o in records)


def free_jobs(sweep: Sweep, records: Mapping[TrialKey, TrialRecord]) -> int:
    """Jobs that may start now: parallelism / trialsPerGPU (at least one) less those running."""
    live = {r.job or str(k) for k, r in records.items() if r.seen and r.undecided}
    return max(0, max(1, sweep.parallelism // sweep.trials_per_gpu) - len(live))


def waiting(records: Mapping[TrialKey, TrialRecord], chosen: Sequence[TrialKey]) -> list[TrialKey]:
    """The chosen trials that no backend runs yet."""
    return [k for k in chosen if records[k].phase is Phase.Pending and not records[k].seen]


def new_jobs(sweep: Sweep, records: Mapping[TrialKey, TrialRecord],
             chosen: Sequence[TrialKey]) -> tuple[tuple[TrialKey, ...], ...]:
    """Pending trials of `chosen` in `Sweep.trials()` order, packed `trialsPerGPU` to a Job, as
    many Jobs as may start; names them in `records`."""
    per_job = sweep.trials_per_gpu
    pending = waiting(records, chosen)
    groups = [tuple(pending[i:i + per_job]) for i in range(0, len(pending), per_job)]
    groups = groups[:free_jobs(sweep, records)]
    for group in groups:
        for k in group:
            records[k].job = job_name(sweep.name, group[0])
    return tuple(groups)
