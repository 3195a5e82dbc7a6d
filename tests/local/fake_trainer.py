"""A FAKE trainer for the runner's fast unit tests: it speaks the contract, trains nothing.

It takes the trainer's flags (docs/contracts.md), serves the same metrics, checkpoints, exits
143 on SIGTERM after saving a checkpoint, and writes the result JSON to --termination-log and
stdout. Its N(b) follows the model N(b) = A*b/(b - B) rounded up to the next evaluation, so a
test knows every trial's answer in advance. The end-to-end tests use the real trainer.

Knobs (environment): FAKE_A, FAKE_B (model constants), FAKE_STEP_SECONDS (sleep per step).
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

from prometheus_client import CollectorRegistry, Gauge, start_http_server


def expected_steps(batch_size: int, eval_every: int, a: float, b: float) -> float:
    """The fake N(b): the first evaluation at or after A*b/(b - B); inf when b <= B."""
    if batch_size <= b:
        return math.inf
    return math.ceil(a * batch_size / (batch_size - b) / eval_every) * eval_every


def parse_flags() -> argparse.Namespace:
    """The trainer's flags the fake ones read; the others are ignored."""
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", default="local")
    p.add_argument("--fid-threshold", type=float, required=True)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--termination-log")
    return p.parse_known_args()[0]


def report(args: argparse.Namespace, *, reached: bool, step: int, fid: float) -> int:
    """The result JSON to --termination-log and as the last stdout line, then the linger."""
    line = json.dumps({
        "sweep": args.sweep, "batch_size": args.batch_size, "seed": args.seed,
        "reached": reached, "steps": step, "interpolated_steps": None,
        "sfo": step * args.batch_size, "fid": fid, "threshold": args.fid_threshold,
        "max_steps": args.max_steps, "wall_seconds": 0.0, "generator_params": 1000,
        "dataset_size": 1797})
    if args.termination_log:
        Path(args.termination_log).write_text(line)
    print(line, flush=True)
    time.sleep(args.linger)
    return 0


def main() -> int:
    args = parse_flags()
    a = float(os.environ.get("FAKE_A", "1000"))
    b = float(os.environ.get("FAKE_B", "8"))
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.002"))
    target = expected_steps(args.batch_size, args.eval_every, a, b)

    labels = {"sweep": args.sweep, "batch_size": str(args.batch_size), "seed": str(args.seed)}
    reg = CollectorRegistry()

    def gauge(name: str) -> Gauge:
        return Gauge(f"critbatch_trainer_{name}", name, list(labels), registry=reg).labels(**labels)

    step_g, fid_g, reached_g = gauge("step"), gauge("fid"), gauge("reached")
    finished_g, max_g, stt_g = gauge("finished"), gauge("max_steps"), None
    max_g.set(args.max_steps)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=reg)

    ckpt = Path(args.checkpoint_dir) / "fake.json" if args.checkpoint_dir else None
    step = 0
    if ckpt is not None and ckpt.exists():
        step = json.loads(ckpt.read_text())["step"]
        print(f"resumed from step {step}", flush=True)

    def save() -> None:
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_text(json.dumps({"step": step}))

    def on_term(signum, frame):
        save()
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    fid = math.inf
    reached = False
    while step < args.max_steps:
        time.sleep(delay)
        step += 1
        step_g.set(step)
        if step % args.eval_every == 0 or step == args.max_steps:
            fid = args.fid_threshold * (target / step if math.isfinite(target) else 2.0)
            fid_g.set(fid)
            if fid <= args.fid_threshold:
                reached = True
                break
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if reached:
        stt_g = gauge("steps_to_threshold")
        stt_g.set(step)
        reached_g.set(1)
    finished_g.set(1)
    return report(args, reached=reached, step=step, fid=fid)


if __name__ == "__main__":
    sys.exit(main())
