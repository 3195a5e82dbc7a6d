"""Trains trials in float64 and writes each step's losses and gradient norms (rank 0's,
averaged over the workers), and every 5 steps the gradient noise scale, as JSON to OUT, one
list per trial: the data-parallel equivalence
test runs it alone and under PyTorch's launcher, one start for all the trials.

    python dp_trajectory.py OUT '[{"steps": 60, "flags": [TRAINER-FLAGS...]}, ...]'
"""

from __future__ import annotations

import json
import sys

import torch

from critbatch_trainer.config import parse_args
from critbatch_trainer.distributed import World
from critbatch_trainer.loop import Trial


def trajectory(world: World, steps: int, flags: list[str]) -> list[dict[str, float]]:
    torch.set_default_dtype(torch.float32)  # the feature extractor's and the data's
    cfg = parse_args(flags)
    trial = Trial.create(cfg, log=lambda _line: None, world=world)
    # In float64 the rounding of a sum's order is ~1e-16, far below what the GAN's dynamics
    # amplify in a few dozen steps, so a mistake in the data-parallel arithmetic cannot hide.
    torch.set_default_dtype(torch.float64)
    for net in (trial.gan.G, trial.gan.D, trial.gan.G_ema):
        if net is not None:
            net.double()  # in place: the optimizers keep their parameters
    batches = ((x.double(), y) for x, y in trial.data.batches(
        cfg.seed, cfg.batch_size, 0, trial.device, shard=trial.gan.shard))
    rows = []
    for _ in range(steps):
        trial.train_step(batches)
        trial.progress.step += 1
        row = trial.gan.loss_values()
        if trial.progress.step % 5 == 0:  # as --gns-every: every rank measures, alone
            row["noise_scale"] = trial.measure_noise_scale() or 0.0
        rows.append(row)
    return rows


def main() -> None:
    out, trials = sys.argv[1], json.loads(sys.argv[2])
    world = World.from_env()
    torch.set_num_threads(1)
    rows = [trajectory(world, t["steps"], t["flags"]) for t in trials]
    world.close()
    if world.leader:
        with open(out, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
