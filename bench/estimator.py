"""How often the posterior finds the SFO argmin, against science.measure's rule, on sweeps drawn
from known truths, and how long `posterior.infer` takes.

For each scenario (where b* lies, noise, stalls, seeds per batch size) every sweep draws a truth
and a full grid of trials from critbatch.simulate, then scores: the most probable batch size
against the measured b* (the least mean SFO over batch sizes whose seeds all reached), how
often the plausible set holds the true argmin and its mean size, and how often the fitted
interval holds the true b*. Same --seed, same table.

    python -m bench.estimator                     # the default table, about a minute
    python -m bench.estimator --sweeps 400 --seed 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from critbatch import posterior, science, simulate

GRID = (4, 8, 16, 32, 64, 128)
WIDE_GRID = tuple(2**k for k in range(2, 14))
FINE_GRID = tuple(sorted({round(4 * 2 ** (k / 4)) for k in range(21)}))  # 4 per octave


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    critical: tuple[float, float]
    sigma: tuple[float, float]
    seeds: int
    stall: float = 0.0
    stall_below: int = 0
    stall_growth: float = 1.0
    grid: tuple[int, ...] = GRID


def scenarios() -> list[Scenario]:
    """b* inside the grid or near either edge, 10 % or 30 % noise, stalls below b = 16 alike
    (0.3) or thinning out with the batch size as in real sweeps (0.6 at b = 4, 0.15 at 8);
    and b* inside a grid of four batch sizes per octave."""
    out = []
    for seeds in (1, 3):
        for label, critical in (("inside", (8.0, 96.0)), ("low edge", (3.0, 8.0)),
                                ("high edge", (96.0, 192.0))):
            for noise in (0.1, 0.3):
                out.append(Scenario(name=f"{label} sd={noise:.0%}", critical=critical,
                                    sigma=(noise, noise), seeds=seeds))
            out.append(Scenario(name=f"{label} sd=10-30% stalls", critical=critical,
                                sigma=(0.1, 0.3), seeds=seeds, stall=0.3, stall_below=16))
            if label != "high edge":  # 0.6 at b = 4, 0.15 at 8
                out.append(Scenario(name=f"{label} sd=10-30% thinning", critical=critical,
                                    sigma=(0.1, 0.3), seeds=seeds, stall=0.15,
                                    stall_below=16, stall_growth=4.0))
        for noise in (0.1, 0.3):
            out.append(Scenario(name=f"fine grid sd={noise:.0%}", critical=(8.0, 96.0),
                                sigma=(noise, noise), seeds=seeds, grid=FINE_GRID))
    return out


def measured_rule(trials: list[posterior.Evidence]) -> int | None:
    """science.measure's b*: the least mean SFO among batch sizes whose seeds all reached."""
    return science.measure(science.Trial(batch_size=t.batch_size, steps=t.steps,
                                         reached=t.reached, seed=t.seed)
                           for t in trials).batch_size


def score(scenario: Scenario, sweeps: int, seed: int, confidence: float = 0.95) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    counts = {"measured": 0, "posterior": 0, "covered": 0, "size": 0, "interval": 0, "answered": 0}
    for i in range(sweeps):
        truth = simulate.random_truth(rng, scenario.grid, critical=scenario.critical,
                                      sigma=scenario.sigma, stall=scenario.stall,
                                      stall_below=scenario.stall_below,
                                      stall_growth=scenario.stall_growth)
        trials = simulate.draw_trials(truth, simulate.sweep_keys(scenario.grid, scenario.seeds),
                                      sim_seed=seed * 100_003 + i)
        want = truth.true_argmin(scenario.grid)
        post = posterior.infer(trials, scenario.grid, confidence=confidence,
                               interval_level=confidence, budget=truth.max_steps)
        counts["measured"] += measured_rule(trials) == want
        counts["posterior"] += post.most_probable == want
        counts["covered"] += want in post.plausible
        counts["size"] += len(post.plausible)
        counts["answered"] += post.interval is not None
        if post.interval is not None:
            counts["interval"] += post.interval[0] <= truth.critical_batch_size \
                <= post.interval[1]
    return {
        "scenario": scenario.name,
        "seeds": scenario.seeds,
        "sweeps": sweeps,
        "old_accuracy": counts["measured"] / sweeps,
        "new_accuracy": counts["posterior"] / sweeps,
        "set_coverage": counts["covered"] / sweeps,
        "set_size": counts["size"] / sweeps,
        "interval_coverage": counts["interval"] / max(1, counts["answered"]),
    }


def timing(grid: tuple[int, ...], seeds: int, repeats: int, seed: int) -> float:
    """Milliseconds per uncached `infer` call on a full sweep of the grid."""
    rng = np.random.default_rng(seed)
    calls = []
    for i in range(repeats):
        truth = simulate.random_truth(rng, grid)
        calls.append(simulate.draw_trials(truth, simulate.sweep_keys(grid, seeds), sim_seed=i))
    posterior.infer(calls[0], grid)  # warm-up: imports, first allocations
    posterior._infer_cached.cache_clear()
    start = time.perf_counter()
    for trials in calls:
        posterior.infer(trials, grid)
    return 1000.0 * (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=150, help="sweeps per scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.sweeps <= 0:
        parser.error("--sweeps: must be positive")

    rows = []
    header = (f"{'scenario':<26} {'seeds':>5} {'old acc':>8} {'new acc':>8} {'set cov':>8} "
              f"{'set size':>8} {'int cov':>8}")
    print(f"grid {','.join(map(str, GRID))} (fine grid {','.join(map(str, FINE_GRID))}), "
          f"{args.sweeps} sweeps per row, seed {args.seed}, "
          f"confidence {args.confidence:g}")
    print(header)
    print("-" * len(header))
    for scenario in scenarios():
        row = score(scenario, args.sweeps, args.seed, args.confidence)
        rows.append(row)
        print(f"{row['scenario']:<26} {row['seeds']:>5} {row['old_accuracy']:>8.3f} "
              f"{row['new_accuracy']:>8.3f} {row['set_coverage']:>8.3f} {row['set_size']:>8.2f} "
              f"{row['interval_coverage']:>8.3f}", flush=True)
    timings = {f"{len(GRID)}x2": timing(GRID, 2, 20, args.seed),
               f"{len(WIDE_GRID)}x3": timing(WIDE_GRID, 3, 20, args.seed),
               f"{len(FINE_GRID)}x3 (fine)": timing(FINE_GRID, 3, 20, args.seed)}
    for name, ms in timings.items():
        print(f"infer, {name} sweep: {ms:.1f} ms per call (uncached)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "infer_ms": timings, "seed": args.seed}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
