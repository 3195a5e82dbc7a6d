"""The adaptive strategy: which trials to add, an initial design first and then Thompson
sampling of the SFO argmin, until the most probable batch size holds the confidence asked for
(docs/contracts.md, the adaptive strategy)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from critbatch import posterior
from critbatch.planning.jobs import free_jobs, waiting
from critbatch.planning.trials import TrialRecord
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey

UNREACHABLE = 0.99  # a batch size this probably at or below B/K gets no more trials
THOMPSON_DRAWS = 256


def initial_design(grid: Sequence[int]) -> tuple[int, ...]:
    """Every other grid point, both ends included: where an adaptive sweep puts its first seeds."""
    grid = sorted(grid)
    return tuple(sorted({*grid[::2], grid[-1]}))


def choose(sweep: Sweep, records: Mapping[TrialKey, TrialRecord], chosen: Sequence[TrialKey],
           post: posterior.Posterior) -> list[tuple[TrialKey, str]]:
    """The trials an adaptive sweep adds now, each with why: the initial design first, then
    Thompson sampling of the SFO argmin, while its most probable batch size holds less than
    the confidence, within maxTrials and the free Jobs.

    The sampler's random numbers are seeded from what has been observed, so a restarted
    operator or runner chooses what the old one would have.
    """
    cap = sweep.strategy.max_trials or len(sweep.trials())
    room = min(cap - len(chosen),
               free_jobs(sweep, records) * sweep.trials_per_gpu - len(waiting(records, chosen)))
    if room <= 0:
        return []
    used = Counter(k.batch_size for k in chosen)
    open_ = {k.batch_size for k in chosen if records[k].undecided}
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


def _choice_seed(sweep: Sweep, records: Mapping[TrialKey, TrialRecord],
                 chosen: Sequence[TrialKey]) -> int:
    state = repr((sweep.name, sorted((k.batch_size, k.seed, records[k].phase.value,
                                      records[k].steps) for k in chosen)))
    return int.from_bytes(hashlib.sha256(state.encode()).digest()[:8], "big")
