"""The FAKE trainer as a data-parallel trial: the launcher's workers, which agree on every step
through torch.distributed (gloo), so that a test really exercises the launcher.

It takes the built-in trainer's flags and gives fake_trainer.py's N(b). As the built-in trainer
does, only rank 0 serves metrics, writes checkpoints and the result (its file, and the last
line of stdout). A SIGTERM to any worker stops them all at the same step: rank 0 checkpoints,
every worker exits 143. Each worker prints `worker RANK pid PID` first.

Knobs (environment): FAKE_A, FAKE_B, FAKE_STEP_SECONDS as for the fake trainer; DP_KILL_RANK
and DP_KILL_AT: that rank kills itself (SIGKILL) at that step, the first DP_KILL_TIMES (1)
attempts of a trial (counted in its checkpoint directory); the others wait for the launcher to
stop them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_trainer import expected_steps, parse_flags, report


class Rank0Metrics:
    """The fake trainer's gauges, served by rank 0 alone."""

    def __init__(self, args: argparse.Namespace) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        labels = {"sweep": args.sweep, "batch_size": str(args.batch_size),
                  "seed": str(args.seed)}
        self.registry = CollectorRegistry()
        self.gauges = {name: Gauge(f"critbatch_trainer_{name}", name, list(labels),
                                   registry=self.registry).labels(**labels)
                       for name in ("step", "fid", "reached", "finished", "max_steps",
                                    "steps_to_threshold")}
        self.set("max_steps", args.max_steps)
        if args.metrics_port:
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=self.registry)

    def set(self, name: str, value: float) -> None:
        self.gauges[name].set(value)


def main() -> int:
    args = parse_flags()
    if not args.checkpoint_dir:
        raise SystemExit("--checkpoint-dir: required")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(f"worker {rank} pid {os.getpid()}", flush=True)
    dist.init_process_group("gloo")
    ckpt_dir = Path(args.checkpoint_dir)
    ckpt, kills = ckpt_dir / "fake.json", ckpt_dir / "kills"
    metrics = Rank0Metrics(args) if rank == 0 else None

    def save(step: int, *, stopped: bool = False) -> None:
        """Rank 0's checkpoint; `stopped` marks the one written on the way out."""
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_text(json.dumps({"step": step, "stopped": stopped}))

    kill_rank = int(os.environ.get("DP_KILL_RANK", "-1"))
    kill_at = int(os.environ.get("DP_KILL_AT", "-1"))
    killed = int(kills.read_text()) if kills.exists() else 0
    kill_now = killed < int(os.environ.get("DP_KILL_TIMES", "1"))
    dist.barrier()  # every rank has read the kill count before rank `kill_rank` writes it

    state = torch.tensor([json.loads(ckpt.read_text())["step"] if rank == 0 and ckpt.exists()
                          else 0])
    dist.broadcast(state, 0)
    step = int(state)
    if rank == 0 and step:
        print(f"resumed from step {step}", flush=True)
    a, b = float(os.environ.get("FAKE_A", "1000")), float(os.environ.get("FAKE_B", "8"))
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.002"))
    target = expected_steps(args.batch_size, args.eval_every, a, b)
    fid, reached = math.inf, False
    while step < args.max_steps:
        if kill_now and step == kill_at:
            if rank == kill_rank:
                kills.write_text(str(killed + 1))
                os.kill(os.getpid(), signal.SIGKILL)
            while not stopping:  # the launcher SIGTERMs the others once it sees the loss
                time.sleep(0.02)
            save(step, stopped=True)
            return 143
        time.sleep(delay)
        agreed = torch.tensor([1.0, float(bool(stopping))])
        dist.all_reduce(agreed)
        assert agreed[0] == world
        if agreed[1]:
            save(step, stopped=True)
            return 143
        step += 1
        if metrics:
            metrics.set("step", step)
        if step % args.eval_every == 0 or step == args.max_steps:
            fid = args.fid_threshold * (target / step if math.isfinite(target) else 2.0)
            if metrics:
                metrics.set("fid", fid)
            if fid <= args.fid_threshold:
                reached = True
                break
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save(step)
    dist.destroy_process_group()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if rank != 0:
        return 0
    if reached:
        metrics.set("steps_to_threshold", step)
        metrics.set("reached", 1)
    metrics.set("finished", 1)
    return report(args, reached=reached, step=step, fid=fid)


if __name__ == "__main__":
    sys.exit(main())
