"""Steps/s of one data-parallel trial: W gloo worker processes against one process, same global
batch, same CPU cores.

Each configuration is one trial of the trainer's own `Trial.train_step` (DCGAN 64x64, the
paper's network, as in `bench.run`) started by PyTorch's launcher through
`critbatch_trainer.launcher`, as `critbatch run` starts it; W = 1 runs the same worker without
the launcher. The cores are shared: W workers get threads / W each. Every worker times the
same steps between barriers; rank 0 reports.

    python -m bench.dataparallel                      # W = 1, 2 at b = 8, 32 on the CPU
    python -m bench.dataparallel --workers 1,2,4 --sizes 16 --steps 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from critbatch.launch import launch_command


def worker(b: int, steps: int, warmup: int, threads: int, image_size: int, out: str) -> None:
    """One rank of the timed trial (run under the launcher, or alone for W = 1)."""
    import torch

    from critbatch_trainer.config import parse_args
    from critbatch_trainer.distributed import World
    from critbatch_trainer.loop import Trial

    world = World.from_env()
    torch.set_num_threads(max(1, threads // world.local_size))
    with tempfile.TemporaryDirectory() as cache:
        cfg = parse_args(["--dataset", "digits", "--image-size", str(image_size),
                          "--channels", "3", "--width", "64", "--z-dim", "100",
                          "--batch-size", str(b), "--fid-threshold", "1", "--max-steps", "1",
                          "--eval-samples", "2", "--real-samples", "64", "--gns-every", "0",
                          "--device", "cpu", "--stats-cache", cache])
        trial = Trial.create(cfg, log=lambda _m: None, world=world)
    batches = trial.data.batches(0, b, 0, trial.device, shard=trial.gan.shard)
    for _ in range(warmup):
        trial.train_step(batches)
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        trial.train_step(batches)
    world.barrier()
    seconds = time.perf_counter() - t0
    world.close()
    if world.leader:
        Path(out).write_text(json.dumps({"steps_per_s": steps / seconds,
                                         "threads_per_worker": torch.get_num_threads()}))


def measure(b: int, workers: int, *, steps: int, warmup: int, threads: int,
            image_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        program = [sys.executable, "-m", "bench.dataparallel", "--worker", "--sizes", str(b),
                   "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads),
                   "--image-size", str(image_size), "--json", str(out)]
        cmd = launch_command(program, python=sys.executable, processes=workers)
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // workers)))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0 or not out.is_file():
            raise SystemExit(f"W={workers} b={b} failed ({done.returncode}):\n"
                             f"{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataparallel",
                                description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 first)")
    p.add_argument("--sizes", default="8,32", help="comma-separated global batch sizes")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads of the trial, shared by its workers")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.worker:
        worker(sizes[0], a.steps, a.warmup, a.threads, a.image_size, a.json)
        return 0
    counts = [int(w) for w in a.workers.split(",")]
    if counts[0] != 1 or any(b % w for b in sizes for w in counts):
        p.error("--workers must start with 1 and divide every batch size")
    rows = []
    for b in sizes:
        sps = {w: measure(b, w, steps=a.steps, warmup=a.warmup, threads=a.threads,
                          image_size=a.image_size)["steps_per_s"] for w in counts}
        ratio = {w: sps[w] / sps[1] for w in counts}
        rows.append({"batch_size": b, "steps_per_s": sps, "ratio": ratio})
        print(f"b={b}: " + ", ".join(f"W={w} {sps[w]:.2f} steps/s ({ratio[w]:.2f}x)"
                                     for w in counts), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "command": "python -m bench.dataparallel " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "threads": a.threads, "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
