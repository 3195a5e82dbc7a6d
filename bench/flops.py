"""FLOPs of one call by operator counting (double backward included), and MFU from them.

`torch.utils.flop_counter.FlopCounterMode` counts with a dispatch mode and, besides, attributes
every count to the modules it runs in. For that attribution its module tracker hooks every
module's inputs for the backward pass; when such an input is a leaf that `autograd.grad` asks
for (WGAN-GP's interpolates), the hook calls `torch._C._will_engine_execute_node` on it, which
the autograd engine refuses inside `autograd.grad` ("A leaf node was passed to
_will_engine_execute_node but we are currently running autograd.grad()"). The total needs no
attribution, so here the tracker is replaced by one that puts every count in the total: the
same operators, formulas and decompositions, no hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) tensor-core peaks of an H100/H200 SXM by the vendor's datasheet, in
# FLOP/s. cuDNN runs "fp32" convolutions in TF32 by default, so TF32 is the fp32 peak here.
PEAKS = {"tf32": 494.7e12, "bf16": 989.4e12}


class _TotalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to the total."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the operators `fn()` runs (matrix products, convolutions, attention; forward,
    backward and double backward), by torch's per-operator formulas."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def mfu_summary(rows: list[dict[str, Any]], gpu: bool) -> dict[str, Any]:
    """Achieved TFLOP/s (and on a GPU the fraction of the peak) of each variant of "ours" at
    the largest batch size whose step was counted; variants named *bf16 against the bf16
    peak."""
    counted = [r for r in rows if r.get("flops_per_step")]
    if not counted:
        return {"batch_size": rows[-1]["batch_size"] if rows else 0, "flops_per_step": 0}
    top = counted[-1]
    flops = top["flops_per_step"]
    out: dict[str, Any] = {"batch_size": top["batch_size"], "flops_per_step": flops}
    for name, sps in top["steps_per_s"].items():
        if name == "baseline":
            continue
        achieved = flops * sps
        entry = {"tflops": achieved / 1e12}
        if gpu:
            peak = PEAKS["bf16" if name.endswith("bf16") else "tf32"]
            entry["peak_tflops"] = peak / 1e12
            entry["mfu"] = achieved / peak
        out[name] = entry
    return out
