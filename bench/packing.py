"""Aggregate steps/s of k trials sharing one device as processes, against one trial alone.

This is what `--trials` (several trials per pod) buys: k OS processes, each running the
trainer's own `Trial.train_step` (built as in bench.run), start their timed steps together
after a warm-up; aggregate = k * steps / (last end - first start). The ratio to k = 1 (one
process alone on the device: "one trial at a time") is the gain. Worker processes are
spawned once and reused across settings, so process start-up is not timed.

    python -m bench.packing                      # tiny on the CPU, the paper's DCGAN on a GPU
    python -m bench.packing --device cuda --batch-sizes 8,32,128,512 --trials 1,2,4,8 \\
        --steps 200 --json packing.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The networks timed: the paper's DCGAN 64x64 RGB (bench.run's) or the digits demo's DCGAN
# 16x16 grayscale (docs/trainer.md), small enough for a CPU.
NETWORKS: dict[str, list[str]] = {
    "paper": [],
    "demo": ["--image-size", "16", "--channels", "1", "--width", "16", "--z-dim", "32"],
}


def _worker(conn: Connection, device_name: str, cache: str) -> None:
    """Per request: (re)use a trial of that batch size, warm it up, report ready, and run the
    timed steps on "go". One trial at a time is kept, so memory does not grow with the sizes."""
    import torch

    from bench.run import build_trial, hardware, stepper, sync

    device = torch.device(device_name)
    conn.send(hardware(device))
    kept: tuple[Any, ...] = ()
    while (request := conn.recv()) is not None:
        b, steps, warmup, threads, extra = request
        try:
            torch.set_num_threads(threads)
            if kept[:2] != (b, extra):
                kept = ()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                kept = (b, extra, stepper(build_trial(b, device, cache, extra)))
            step = kept[2]
            for _ in range(warmup):
                step()
            sync(device)
        except Exception as e:  # e.g. out of memory at a large k: only that setting is lost
            kept = ()
            conn.send(("error", f"{type(e).__name__}: {e}"))
            conn.recv()
            continue
        conn.send(("ready",))
        if conn.recv() == "go":
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            conn.send(("done", t0, time.perf_counter()))


class Pool:
    """`size` spawned workers on one device; `run(k, ...)` times the first k together."""

    def __init__(self, size: int, device: str, cache: str) -> None:
        ctx = mp.get_context("spawn")  # CUDA cannot be forked; each worker has its own context
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, device, cache), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.hardware = [self._recv(c) for c in self.conns][-1]

    def _recv(self, conn: Connection) -> Any:
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError("a benchmark worker died (see its output above)") from None

    def run(self, k: int, b: int, *, steps: int, warmup: int, threads: int,
            extra: list[str]) -> dict[str, Any]:
        conns = self.conns[:k]
        for c in conns:
            c.send((b, steps, warmup, threads, extra))
        replies = [self._recv(c) for c in conns]
        errors = [r[1] for r in replies if r[0] == "error"]
        for c in conns:
            c.send("skip" if errors else "go")
        if errors:
            return {"error": errors[0]}
        done = [self._recv(c) for c in conns]
        starts, ends = [d[1] for d in done], [d[2] for d in done]
        wall = max(ends) - min(starts)
        return {"wall_seconds": wall, "aggregate_steps_per_s": k * steps / wall,
                "per_trial_steps_per_s": [steps / (e - s) for s, e in
                                          zip(starts, ends, strict=True)]}

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def measure(batch_sizes: list[int], ks: list[int], *, device: str, network: str, steps: int,
            warmup: int, threads: int, rounds: int, extra: list[str],
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """One row per (batch size, k), the best of `rounds` interleaved rounds; k = 1 is always
    timed, as the baseline of the ratio."""
    ks = sorted(set(ks) | {1})
    flags = [*NETWORKS[network], "--device", device, *extra]
    best: dict[tuple[int, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as cache:
        pool = Pool(max(ks), device, cache)
        try:
            for b in batch_sizes:
                for r in range(rounds):
                    for k in ks:
                        per = max(1, threads // k)
                        got = pool.run(k, b, steps=steps, warmup=warmup, threads=per,
                                       extra=flags)
                        log(f"round {r + 1}: b={b} k={k} threads={per}: " + (
                            got["error"] if "error" in got
                            else f"{got['aggregate_steps_per_s']:.2f} steps/s"))
                        old = best.get((b, k))
                        if old is None or got.get("aggregate_steps_per_s", 0) > old.get(
                                "aggregate_steps_per_s", 0):
                            best[(b, k)] = {"batch_size": b, "trials": k,
                                            "threads_per_trial": per, **got}
        finally:
            pool.close()
    rows = []
    for b in batch_sizes:
        single = best[(b, 1)].get("aggregate_steps_per_s")
        for k in ks:
            row = best[(b, k)]
            agg = row.get("aggregate_steps_per_s")
            row["single_steps_per_s"] = single
            row["ratio"] = agg / single if agg and single else None
            rows.append(row)
    return {"hardware": pool.hardware, "rows": rows}


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain-text table."""
    lines = [f"{'b':>6} {'k':>3} {'aggregate/s':>12} {'single/s':>12} {'ratio':>7}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['batch_size']:>6} {row['trials']:>3}  failed: {row['error']}")
            continue
        single, ratio = row["single_steps_per_s"], row["ratio"]
        lines.append(
            f"{row['batch_size']:>6} {row['trials']:>3} {row['aggregate_steps_per_s']:>12.2f} "
            + (f"{single:>12.2f} " if single else f"{'-':>12} ")
            + (f"{ratio:>6.2f}x" if ratio is not None else f"{'-':>7}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing",
                                description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-sizes", default="8,32,128", help="comma-separated (default 8,32,128)")
    p.add_argument("--trials", default="1,2,4,8", help="values of k, processes sharing the "
                   "device (default 1,2,4,8)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per process (default: GPU 200, CPU 30)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per process first (default: GPU 10, CPU 3)")
    p.add_argument("--network", choices=tuple(NETWORKS), default=None,
                   help="paper: DCGAN 64x64 RGB width 64; demo: the digits demo's 16x16 "
                        "(default: GPU paper, CPU demo)")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds; the best counts (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the machine, split among the k processes "
                        "(default: the CPUs this process may use)")
    p.add_argument("--trainer-flags", default="",
                   help="more trainer flags for every process, e.g. '--cuda-graph'")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    import torch  # after argument parsing: --help stays fast

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    gpu = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = "cuda" if gpu else "cpu"
    try:
        sizes = [int(s) for s in a.batch_sizes.split(",")]
        ks = [int(k) for k in a.trials.split(",")]
    except ValueError:
        p.error("--batch-sizes and --trials take comma-separated integers")
    if min(sizes) < 1 or min(ks) < 1:
        p.error("--batch-sizes and --trials must be positive")
    steps = a.steps or (200 if gpu else 30)
    warmup = a.warmup if a.warmup is not None else (10 if gpu else 3)
    network = a.network or ("paper" if gpu else "demo")
    threads = a.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count() or 1)
    out = measure(sizes, ks, device=device, network=network, steps=steps, warmup=warmup,
                  threads=threads, rounds=max(1, a.rounds), extra=shlex.split(a.trainer_flags),
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    out = {"command": "python -m bench.packing " + " ".join(
        sys.argv[1:] if argv is None else argv), "hardware": out["hardware"],
        "settings": {"device": device, "network": network, "steps": steps, "warmup": warmup,
                     "rounds": a.rounds, "threads": threads,
                     "trainer_flags": a.trainer_flags},
        "rows": out["rows"]}
    print(json.dumps(out["hardware"]), flush=True)
    print(table(out["rows"]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    failed = [r for r in out["rows"] if "error" in r]
    return 1 if failed and len(failed) == len(out["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
