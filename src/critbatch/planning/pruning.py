"""SFO-bound pruning: stop the trials of a batch size that can no longer beat a finished one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from critbatch.planning.trials import Phase, TrialRecord, by_batch
from critbatch.vocabulary import TrialKey


def _best_complete_sfo(groups: Mapping[int, Sequence[TrialRecord]]) -> float | None:
    """The least mean SFO of a batch size whose trials all reached the target."""
    best = None
    for b, group in groups.items():
        if all(r.phase is Phase.Reached for r in group):
            value = b * sum(float(r.steps) for r in group) / len(group)
            best = value if best is None else min(best, value)
    return best


def sfo_lower_bound(batch_size: int, steps: Sequence[float | None]) -> float:
    """Least mean SFO a batch size can still end with, given each seed's steps so far."""
    return batch_size * sum(float(s or 0.0) for s in steps) / len(steps)


def prune(records: Sequence[TrialRecord]) -> list[TrialKey]:
    """Mark Pruned the open trials of a batch size whose mean SFO can no longer beat a finished
    one's, and return those of them a backend runs now; `records` are the sweep's trials (an
    adaptive sweep's: those it started)."""
    groups = by_batch(records)
    best = _best_complete_sfo(groups)
    if best is None:
        return []
    pruned = []
    for b in sorted(groups):
        group = groups[b]
        open_ = [r for r in group if r.undecided]
        if not open_ or any(r.phase in (Phase.Censored, Phase.Failed) for r in group):
            continue
        bound = sfo_lower_bound(b, [r.steps for r in group])
        if bound >= best:
            for r in open_:
                r.phase = Phase.Pruned
                r.reason = (f"SFO lower bound {bound:.6g} at batch size {b} >= best finished "
                            f"SFO {best:.6g}: cannot win")
                if r.seen:
                    pruned.append(r.key)
    return pruned
