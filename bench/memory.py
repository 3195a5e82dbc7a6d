"""Peak memory of training steps per batch size, whole and in micro-batches (`--micro-batch`).

Each (batch size, micro-batch) runs in a fresh process: two steps of the trainer's
`Trial.train_step`, built as in bench.run with the model's benchmark settings. On a GPU the
peak is the allocator's (`torch.cuda.max_memory_allocated`: tensors only); on the CPU it is
the process's resident high-water mark (tensors, the allocator's slack and the libraries), so
compare CPU rows with each other, not with a device's size. A setting that fails (out of
memory) is reported with its error, and the others go on.

    python -m bench.memory --model biggan --sizes 2,4,8 --micro-batches 0,2    # CPU, small
    python -m bench.memory --model biggan --device cuda --sizes 256,512,1024,2048 \\
        --micro-batches 0,256 --json memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def _one(model: str, device_name: str, b: int, micro: int, image_size: int | None,
         width: int | None) -> dict[str, Any]:
    """Two steps at batch size b in this process; the peak and the second step's time."""
    import resource

    import torch

    from bench import specs
    from bench.run import build_trial, stepper, sync

    device = torch.device(device_name)
    spec = specs.setup(model, device.type == "cuda", image_size=image_size, width=width)
    trial = build_trial(b, device, tempfile.mkdtemp(), [*spec.trainer_flags(),
                                                        "--micro-batch", str(micro)])
    step = stepper(trial)
    if device.type == "cuda":
        sync(device)
        built = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"built_mib": built / MIB, "peak_mib": peak / MIB, "step_s": seconds}


def measure(model: str, device: str, sizes: list[int], micro_batches: list[int],
            image_size: int | None = None, width: int | None = None) -> list[dict[str, Any]]:
    """One row per batch size and micro-batch (a micro-batch not below b is the whole batch,
    already measured, and is skipped)."""
    rows = []
    for b in sizes:
        for m in micro_batches:
            if m >= b:
                continue
            cmd = [sys.executable, "-m", "bench.memory", "--one", "--model", model,
                   "--device", device, "--sizes", str(b), "--micro-batches", str(m)]
            cmd += ["--image-size", str(image_size)] * (image_size is not None)
            cmd += ["--width", str(width)] * (width is not None)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            row: dict[str, Any] = {"batch_size": b, "micro_batch": m}
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and lines:
                row.update(json.loads(lines[-1]))
            else:
                row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            print(f"b={b:5d} micro-batch={m or 'whole':>5} "
                  + (f"peak {row['peak_mib']:9.0f} MiB (built {row['built_mib']:.0f}), "
                     f"step {row['step_s']:.2f} s" if "error" not in row
                     else f"failed: {row['error']}"), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="biggan", choices=("dcgan", "wgan-gp", "biggan"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--sizes", default="2,4,8", help="batch sizes, comma-separated")
    p.add_argument("--micro-batches", default="0,2",
                   help="micro-batch sizes, comma-separated; 0 = the whole batch")
    p.add_argument("--image-size", type=int, help="override the model's benchmark resolution")
    p.add_argument("--width", type=int, help="override the model's benchmark width")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    micro = [int(m) for m in a.micro_batches.split(",")]
    if a.one:
        print(json.dumps(_one(a.model, a.device, sizes[0], micro[0], a.image_size, a.width)))
        return 0
    rows = measure(a.model, a.device, sizes, micro, a.image_size, a.width)
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "device": a.device, "rows": rows},
                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
