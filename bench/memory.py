"""Peak memory of training steps per batch size, whole, in micro-batches (`--micro-batch`),
with recomputed activations (`--recompute-activations`) and fused attention
(`--fused-attention`).

Each setting runs in a fresh process: the trainer's `Trial`, built as in bench.run with the
model's benchmark settings, and three of its `train_step`s. The peak is that of the tensors
alive during the first two steps (the first one also allocates the optimizers' moments): on a
GPU the allocator's (`torch.cuda.max_memory_allocated`), on the CPU the sum of live tensors
that PyTorch's profiler follows through the allocator from before the trial is built: tensors
only, on both, without the allocator's slack or the libraries. The third step is timed,
without the profiler. A setting that fails (out of memory) is reported with its error, and the
others go on.

    python -m bench.memory --model biggan --sizes 2,4,8 --micro-batches 0,2 --recompute 0,1
    python -m bench.memory --model biggan --device cuda --sizes 256,512,1024,2048 \\
        --micro-batches 0,256 --recompute 0,1 --fused-attention 0,1 --json memory.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIB = 1 << 20
STEP = "bench.memory.step"  # the profiler's name of a measured step


@contextlib.contextmanager
def _cpu_tensor_bytes(out: dict[str, float]) -> Iterator[None]:
    """Follows the CPU allocator's live bytes with the profiler; on exit `out` holds the bytes
    live when the first `STEP` range starts (the built trial) and the most live within one."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == STEP]
    memory = sorted((e["ts"], e["args"]["Total Allocated"]) for e in events
                    if e.get("name") == "[memory]")
    first = min(start for start, _ in steps)
    out["built"] = ([total for ts, total in memory if ts < first] or [0])[-1]
    out["peak"] = max(total for ts, total in memory
                      if any(start <= ts <= end for start, end in steps))


def _one(model: str, device_name: str, b: int, micro: int, recompute: bool, fused: bool,
         image_size: int | None, width: int | None) -> dict[str, Any]:
    """The built trial's and its steps' peak tensor bytes, and one step's time, at b."""
    import torch
    from torch.profiler import record_function

    from bench import specs
    from bench.run import build_trial, stepper, sync

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    spec = specs.setup(model, cuda, image_size=image_size, width=width)
    flags = [*spec.trainer_flags(), "--micro-batch", str(micro),
             "--recompute-activations", str(recompute), "--fused-attention", str(fused)]
    tensors: dict[str, float] = {}
    with contextlib.nullcontext() if cuda else _cpu_tensor_bytes(tensors):
        step = stepper(build_trial(b, device, tempfile.mkdtemp(), flags))
        if cuda:
            sync(device)
            tensors["built"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            with record_function(STEP):
                step()
        sync(device)
    if cuda:
        tensors["peak"] = torch.cuda.max_memory_allocated()
    t0 = time.perf_counter()
    step()
    sync(device)
    return {"built_mib": tensors["built"] / MIB, "peak_mib": tensors["peak"] / MIB,
            "step_s": time.perf_counter() - t0}


def measure(model: str, device: str, sizes: list[int], micro_batches: list[int],
            recompute: list[bool] | None = None, fused: list[bool] | None = None,
            image_size: int | None = None, width: int | None = None) -> list[dict[str, Any]]:
    """One row per batch size, micro-batch, recomputation and attention setting (a micro-batch
    not below b is the whole batch, already measured, and is skipped)."""
    rows = []
    for b, m, r, f in itertools.product(sizes, micro_batches, recompute or [False],
                                        fused or [False]):
        if m >= b:
            continue
        cmd = [sys.executable, "-m", "bench.memory", "--one", "--model", model,
               "--device", device, "--sizes", str(b), "--micro-batches", str(m),
               "--recompute", str(int(r)), "--fused-attention", str(int(f))]
        cmd += ["--image-size", str(image_size)] * (image_size is not None)
        cmd += ["--width", str(width)] * (width is not None)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        row: dict[str, Any] = {"batch_size": b, "micro_batch": m, "recompute": r,
                               "fused_attention": f}
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            row.update(json.loads(lines[-1]))
        else:
            row["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        print(f"b={b:5d} micro-batch={m or 'whole':>5} recompute={'yes' if r else 'no':>3} "
              f"fused={'yes' if f else 'no':>3} "
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
    p.add_argument("--recompute", default="0",
                   help="recompute activations: 0, 1 or 0,1 (both; biggan only)")
    p.add_argument("--fused-attention", default="0",
                   help="fused attention: 0, 1 or 0,1 (both; biggan only)")
    p.add_argument("--image-size", type=int, help="override the model's benchmark resolution")
    p.add_argument("--width", type=int, help="override the model's benchmark width")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    micro = [int(m) for m in a.micro_batches.split(",")]
    recompute = [bool(int(r)) for r in a.recompute.split(",")]
    fused = [bool(int(f)) for f in a.fused_attention.split(",")]
    if a.one:
        print(json.dumps(_one(a.model, a.device, sizes[0], micro[0], recompute[0], fused[0],
                              a.image_size, a.width)))
        return 0
    rows = measure(a.model, a.device, sizes, micro, recompute, fused, a.image_size, a.width)
    if a.json:
        import torch

        from bench.run import hardware

        # after the measurements: a CUDA context of this process would take device memory
        a.json.write_text(json.dumps({"model": a.model, "device": a.device,
                                      "hardware": hardware(torch.device(a.device)),
                                      "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
