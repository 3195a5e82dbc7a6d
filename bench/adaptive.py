"""Grid against adaptive: the planner itself run against synthetic trials from known truths.

For each scenario (where b* lies, noise, stalls) every simulated sweep draws a truth, then runs
the same sweep twice through `critbatch.planner.plan` with `critbatch.simulate.simulate_sweep`:
once as a grid (every batch size with every seed) and once adaptive (spec.strategy.type:
adaptive, confidence 0.9, the grid as its choice and `--seeds` as the most seeds a batch size
gets). Both see the same trial for the same (batch size, seed). Scores per strategy: how often
the most probable batch size is the true argmin, how often the plausible set holds it and its
mean size, how often the sweep ends resolved, the trials started and the SFO spent (pruned
trials count the steps they ran). Same --seed, same table.

    python -m bench.adaptive                  # the default table, a few minutes
    python -m bench.adaptive --sweeps 100 --seed 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from critbatch import simulate
from critbatch.spec import Sweep, parse_sweep

GRID = (4, 8, 16, 32, 64, 128)
STRATEGIES = ("grid", "adaptive")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    critical: tuple[float, float]
    sigma: tuple[float, float]
    stall: float = 0.0
    stall_below: int = 0


SCENARIOS = (
    Scenario(name="inside, sd 10-30%", critical=(8.0, 96.0), sigma=(0.1, 0.3)),
    Scenario(name="inside, stalls", critical=(8.0, 96.0), sigma=(0.1, 0.3), stall=0.3,
             stall_below=16),
    Scenario(name="low edge, sd 10-30%", critical=(3.0, 8.0), sigma=(0.1, 0.3)),
    Scenario(name="high edge, sd 10-30%", critical=(96.0, 192.0), sigma=(0.1, 0.3)),
)


def sweep_for(truth: simulate.Truth, strategy: str, seeds: int, parallelism: int) -> Sweep:
    """A digits sweep over GRID whose target matches the truth's evaluations and budget."""
    spec: dict[str, Any] = {
        "trainer": {"model": "dcgan", "dataset": {"name": "digits"}},
        "optimizer": {"name": "adam"},
        "batchSizes": list(GRID),
        "seeds": seeds,
        "target": {"fidThreshold": 50, "maxSteps": int(truth.max_steps),
                   "evalEvery": int(truth.eval_every)},
        "parallelism": parallelism,
        "strategy": {"type": strategy},
    }
    return parse_sweep({"apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
                        "metadata": {"name": "bench"}, "spec": spec})


def score(scenario: Scenario, *, sweeps: int, seeds: int, parallelism: int,
          rng: np.random.Generator) -> dict[str, dict[str, float]]:
    totals = {s: dict.fromkeys(("right", "covered", "size", "resolved", "trials", "sfo"), 0.0)
              for s in STRATEGIES}
    for i in range(sweeps):
        truth = simulate.random_truth(rng, GRID, critical=scenario.critical, sigma=scenario.sigma,
                                      stall=scenario.stall, stall_below=scenario.stall_below)
        true = truth.true_argmin(GRID)
        for strategy in STRATEGIES:
            run = simulate.simulate_sweep(sweep_for(truth, strategy, seeds, parallelism), truth,
                                          seed=i)
            cbs = run.status["criticalBatchSize"]
            t = totals[strategy]
            t["right"] += cbs["mostProbable"] == true
            t["covered"] += true in (cbs["plausible"] or [])
            t["size"] += len(cbs["plausible"] or [])
            t["resolved"] += bool(cbs["resolved"])
            t["trials"] += len(run.started)
            t["sfo"] += run.sfo_spent
    return {s: {k: v / sweeps for k, v in t.items()} for s, t in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adaptive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", type=int, default=40, help="sweeps per scenario (40)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per batch size (3)")
    parser.add_argument("--parallelism", type=int, default=4, help="trials at once (4)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (0)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.sweeps <= 10_000 or not 1 <= args.seeds <= 32 \
            or not 1 <= args.parallelism <= 256:
        parser.error("--sweeps 1..10000, --seeds 1..32, --parallelism 1..256")
    rng = np.random.default_rng(args.seed)
    rows = []
    started = time.perf_counter()
    print(f"{len(GRID)} batch sizes {GRID[0]}..{GRID[-1]}, {args.seeds} seeds, parallelism "
          f"{args.parallelism}, {args.sweeps} sweeps per scenario, seed {args.seed}")
    print("| scenario | strategy | most probable right | set covers truth | set size | "
          "resolved | trials | SFO spent (vs grid) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        result = score(scenario, sweeps=args.sweeps, seeds=args.seeds,
                       parallelism=args.parallelism, rng=rng)
        for strategy in STRATEGIES:
            r = result[strategy]
            ratio = r["sfo"] / result["grid"]["sfo"]
            rows.append({"scenario": scenario.name, "strategy": strategy, **r,
                         "sfo_vs_grid": ratio})
            print(f"| {scenario.name} | {strategy} | {r['right']:.3f} | {r['covered']:.3f} | "
                  f"{r['size']:.2f} | {r['resolved']:.3f} | {r['trials']:.1f} | "
                  f"{r['sfo']:.4g} ({ratio:.2f}) |", flush=True)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
