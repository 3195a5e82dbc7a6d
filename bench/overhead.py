"""Where a local sweep's wall time goes: trials started cold against forked from a warm server.

Runs one sweep file with `critbatch run` once per mode, one after the other in one process
(each mode in a fresh output directory), and reads the `timings:` line each trainer process
leaves in its trial's log (critbatch_trainer.timings). The sweep's slot time is its wall time
times spec.parallelism; what the trainers do not account for (process exit, the runner's
polling, slots left idle) is "other".

    python -m bench.overhead                                  # the digits demo on the CPU
    python -m bench.overhead --sweep examples/digits-gpu.yaml --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from critbatch_trainer.timings import Timings, parse_line

PHASES = tuple(f.name for f in fields(Timings))
MODES = {"cold": ["--no-warm"], "warm": []}


def trial_timings(out: Path) -> list[dict[str, float]]:
    """Every trainer process's phases in a run directory (restarts are processes too)."""
    found = []
    for log in sorted(out.glob("trials/*/trainer.log")):
        for line in log.read_text(errors="replace").splitlines():
            phases = parse_line(line)
            if phases is not None:
                found.append(phases)
    return found


def run_mode(sweep: Path, mode: str, out: Path, log: Any) -> dict[str, Any]:
    """One `critbatch run` of `sweep` in `mode`, timed, with its trials' phases summed."""
    argv = [sys.executable, "-m", "critbatch", "run", str(sweep), "-o", str(out), "--quiet",
            *MODES[mode]]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: the sweep ran but did not succeed
        raise RuntimeError(f"{mode}: critbatch run exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")
    parallelism = int(yaml.safe_load(sweep.read_text())["spec"].get("parallelism", 1))
    processes = trial_timings(out)
    sums = {p: sum(t[p] for t in processes) for p in PHASES}
    slot = wall * parallelism
    row = {"mode": mode, "wall_seconds": wall, "parallelism": parallelism,
           "processes": len(processes), "seconds": sums,
           "other_seconds": slot - sum(sums.values()),
           "training_share": (sums["train"] + sums["evaluate"]) / slot,
           "result": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}
    log(f"{mode}: {wall:.1f} s wall, {len(processes)} trainer processes; " + ", ".join(
        f"{p} {v:.1f} s" for p, v in sums.items()) + f", other {row['other_seconds']:.1f} s; "
        f"training and evaluation {100 * row['training_share']:.0f}% of "
        f"{parallelism} x wall")
    log(f"{mode}: {row['result']}")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead",
                                description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, default=Path("examples/digits-local.yaml"))
    p.add_argument("--modes", default="cold,warm", help="comma-separated: cold, warm")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    if not a.sweep.is_file():
        p.error(f"--sweep: no such file: {a.sweep}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            rows.append(run_mode(a.sweep, mode, Path(tmp) / mode, log))
    out: dict[str, Any] = {"command": "python -m bench.overhead " + " ".join(
        sys.argv[1:] if argv is None else argv), "sweep": str(a.sweep), "modes": rows}
    walls = {r["mode"]: r["wall_seconds"] for r in rows}
    if {"cold", "warm"} <= set(walls):
        out["wall_ratio_cold_over_warm"] = walls["cold"] / walls["warm"]
        log(f"wall time cold / warm: {out['wall_ratio_cold_over_warm']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
